// RUN: llmirc opt %s --passes='convert-weights{dtype=f16}' | filecheck %s
// Weight matrices (embedding table, linear weights) are stored as f16; the embedding's rows
// come back to f32 through llm.convert, so activations stay f32. The norm weight (rank 1)
// and a matrix with another use (matmul) stay f32.

// CHECK-LABEL: func.func @embed_norm_head
// CHECK-DAG:   %[[T:.+]] = "llm.weight"() {name = "embed.weight.f16"} : () -> tensor<100x16xf16>
// CHECK:       %[[E:.+]] = "llm.embedding"(%arg0, %[[T]]) : (tensor<?x?xi64>, tensor<100x16xf16>) -> tensor<?x?x16xf16>
// CHECK:       %[[X:.+]] = "llm.convert"(%[[E]]) {dtype = "f32"} : (tensor<?x?x16xf16>) -> tensor<?x?x16xf32>
// CHECK:       "llm.rms_norm"(%[[X]], %{{.+}}) {{.+}} : (tensor<?x?x16xf32>, tensor<16xf32>)
// CHECK:       "llm.linear"(%{{.+}}, %[[T]]) {{.+}} : (tensor<?x?x16xf32>, tensor<100x16xf16>) -> tensor<?x?x100xf32>
// CHECK:       "llm.matmul"(%{{.+}}, %{{.+}}) : (tensor<?x?x16xf32>, tensor<16x16xf32>)
// CHECK-NOT:   {name = "embed.weight"}
func.func @embed_norm_head(%ids: tensor<?x?xi64>) -> (tensor<?x?x100xf32>, tensor<?x?x16xf32>) {
  %t = "llm.weight"() {name = "embed.weight"} : () -> tensor<100x16xf32>
  %x = "llm.embedding"(%ids, %t) : (tensor<?x?xi64>, tensor<100x16xf32>) -> tensor<?x?x16xf32>
  %nw = "llm.weight"() {name = "norm.weight"} : () -> tensor<16xf32>
  %h = "llm.rms_norm"(%x, %nw) {eps = 1.0e-05 : f32} : (tensor<?x?x16xf32>, tensor<16xf32>) -> tensor<?x?x16xf32>
  %y = "llm.linear"(%h, %t) {operandSegmentSizes = array<i32: 1, 1, 0>} : (tensor<?x?x16xf32>, tensor<100x16xf32>) -> tensor<?x?x100xf32>
  %m = "llm.weight"() {name = "m"} : () -> tensor<16x16xf32>
  %z = "llm.matmul"(%h, %m) : (tensor<?x?x16xf32>, tensor<16x16xf32>) -> tensor<?x?x16xf32>
  return %y, %z : tensor<?x?x100xf32>, tensor<?x?x16xf32>
}
