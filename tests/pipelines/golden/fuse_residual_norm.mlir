// RUN: llmirc opt %s --passes=fuse-residual-norm | filecheck %s

// CHECK-LABEL: func.func @block
// CHECK:       %[[F:.+]]:2 = "llm.add_rms_norm"(%arg0, %arg1, %{{.+}}) {eps = 9.99999974E-6 : f32}
// CHECK-NOT:   "llm.add"
// CHECK-NOT:   "llm.rms_norm"
// CHECK:       return %[[F]]#0, %[[F]]#1
func.func @block(%x: tensor<?x?x16xf32>, %r: tensor<?x?x16xf32>) -> (tensor<?x?x16xf32>, tensor<?x?x16xf32>) {
  %s = "llm.add"(%x, %r) : (tensor<?x?x16xf32>, tensor<?x?x16xf32>) -> tensor<?x?x16xf32>
  %w = "llm.weight"() {name = "norm"} : () -> tensor<16xf32>
  %n = "llm.rms_norm"(%s, %w) {eps = 1.0e-5 : f32} : (tensor<?x?x16xf32>, tensor<16xf32>) -> tensor<?x?x16xf32>
  return %s, %n : tensor<?x?x16xf32>, tensor<?x?x16xf32>
}
