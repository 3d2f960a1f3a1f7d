// RUN: llmirc opt %s --passes=fuse-gate-up,fuse-matmul-activation | filecheck %s
// SwiGLU MLP: gate and up become one matmul, then silu(gate) * up its epilogue.

// CHECK-LABEL: func.func @mlp
// CHECK:       %[[W:.+]] = "llm.concat"(%{{.+}}, %{{.+}}) {axis = 0 : i64} : (tensor<48x16xf32>, tensor<48x16xf32>) -> tensor<96x16xf32>
// CHECK-NEXT:  %[[H:.+]] = "llm.fused_linear"(%arg0, %[[W]]) {activation = "swiglu"
// CHECK-SAME:  -> tensor<?x48xf32>
// CHECK-NOT:   "llm.silu"
// CHECK-NOT:   "llm.mul"
// CHECK:       "llm.linear"(%[[H]], %{{.+}})
func.func @mlp(%x: tensor<?x16xf32>) -> tensor<?x16xf32> {
  %wg = "llm.weight"() {name = "mlp.gate_proj.weight"} : () -> tensor<48x16xf32>
  %g = "llm.linear"(%x, %wg) {operandSegmentSizes = array<i32: 1, 1, 0>} : (tensor<?x16xf32>, tensor<48x16xf32>) -> tensor<?x48xf32> loc("mlp.gate_proj")
  %s = "llm.silu"(%g) : (tensor<?x48xf32>) -> tensor<?x48xf32>
  %wu = "llm.weight"() {name = "mlp.up_proj.weight"} : () -> tensor<48x16xf32>
  %u = "llm.linear"(%x, %wu) {operandSegmentSizes = array<i32: 1, 1, 0>} : (tensor<?x16xf32>, tensor<48x16xf32>) -> tensor<?x48xf32> loc("mlp.up_proj")
  %m = "llm.mul"(%s, %u) : (tensor<?x48xf32>, tensor<?x48xf32>) -> tensor<?x48xf32>
  %wd = "llm.weight"() {name = "mlp.down_proj.weight"} : () -> tensor<16x48xf32>
  %d = "llm.linear"(%m, %wd) {operandSegmentSizes = array<i32: 1, 1, 0>} : (tensor<?x48xf32>, tensor<16x48xf32>) -> tensor<?x16xf32>
  return %d : tensor<?x16xf32>
}

// gelu after a linear becomes its epilogue.
// CHECK-LABEL: func.func @gelu
// CHECK:       "llm.fused_linear"(%arg0, %{{.+}}) {activation = "gelu_tanh"
// CHECK-NOT:   "llm.gelu"
func.func @gelu(%x: tensor<?x16xf32>) -> tensor<?x8xf32> {
  %w = "llm.weight"() {name = "fc"} : () -> tensor<8x16xf32>
  %y = "llm.linear"(%x, %w) {operandSegmentSizes = array<i32: 1, 1, 0>} : (tensor<?x16xf32>, tensor<8x16xf32>) -> tensor<?x8xf32>
  %g = "llm.gelu"(%y) {approximate = "tanh"} : (tensor<?x8xf32>) -> tensor<?x8xf32>
  return %g : tensor<?x8xf32>
}
