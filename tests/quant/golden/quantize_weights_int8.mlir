// RUN: llmirc opt %s --passes='quantize-weights{group_size=32}' | filecheck %s
// int8, symmetric (the default): no zero points; a gelu epilogue stays gelu.
// CHECK-LABEL: func.func @gelu_int8
// CHECK:       %[[Y:.+]] = "llm.quantized_matmul"(%arg0, %{{.+}}, %{{.+}}) {act_bits = 0 : i64, bits = 8 : i64, group_size = 32 : i64
// CHECK-SAME:    (tensor<?x32xf32>, tensor<16x32xi8>, tensor<16x1xf32>) -> tensor<?x16xf32>
// CHECK:       "llm.gelu"(%[[Y]]) {approximate = "tanh"}
func.func @gelu_int8(%x: tensor<?x32xf32>) -> tensor<?x16xf32> {
  %w = "llm.weight"() {name = "w"} : () -> tensor<16x32xf32>
  %y = "llm.fused_linear"(%x, %w) {activation = "gelu_tanh", operandSegmentSizes = array<i32: 1, 1, 0>} : (tensor<?x32xf32>, tensor<16x32xf32>) -> tensor<?x16xf32>
  return %y : tensor<?x16xf32>
}
