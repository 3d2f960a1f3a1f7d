// RUN: llmirc opt %s --passes=dce | filecheck %s
// Unused llm ops go; MLIR's own DCE would keep them (unregistered ops count as side-effecting).

// CHECK-LABEL: func.func @f
// CHECK-NOT:   "llm.silu"
// CHECK:       "llm.gelu"
// CHECK-NEXT:  return
func.func @f(%x: tensor<4x8xf32>) -> tensor<4x8xf32> {
  %0 = "llm.silu"(%x) : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %1 = "llm.silu"(%0) : (tensor<4x8xf32>) -> tensor<4x8xf32>
  %2 = "llm.gelu"(%x) {approximate = "none"} : (tensor<4x8xf32>) -> tensor<4x8xf32>
  return %2 : tensor<4x8xf32>
}
