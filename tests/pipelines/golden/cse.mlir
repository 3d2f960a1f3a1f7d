// RUN: llmirc opt %s --passes=cse | filecheck %s
// A tied embedding loads the same weight twice; cse keeps one load.

// CHECK-LABEL: func.func @head
// CHECK:       %[[W:.+]] = "llm.weight"() {name = "model.embed_tokens.weight"}
// CHECK-NOT:   "llm.weight"
// CHECK:       "llm.embedding"(%arg0, %[[W]])
// CHECK:       "llm.linear"(%{{.+}}, %[[W]])
func.func @head(%ids: tensor<?x?xi64>) -> tensor<?x?x32xf32> {
  %0 = "llm.weight"() {name = "model.embed_tokens.weight"} : () -> tensor<32x16xf32>
  %1 = "llm.embedding"(%ids, %0) : (tensor<?x?xi64>, tensor<32x16xf32>) -> tensor<?x?x16xf32>
  %2 = "llm.weight"() {name = "model.embed_tokens.weight"} : () -> tensor<32x16xf32>
  %3 = "llm.linear"(%1, %2) {operandSegmentSizes = array<i32: 1, 1, 0>} : (tensor<?x?x16xf32>, tensor<32x16xf32>) -> tensor<?x?x32xf32>
  return %3 : tensor<?x?x32xf32>
}
