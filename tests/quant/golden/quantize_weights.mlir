// RUN: llmirc opt %s --passes='quantize-weights{bits=4,group_size=64,symmetric=false}' | filecheck %s
// A fused gate/up (swiglu epilogue) and a down projection with a bias become quantized_matmuls on
// derived int4 weights; the epilogue and the bias become ops after the matmul. down_proj's 96
// in-features are not a multiple of 64: it falls back to groups of 48. lm_head stays f32 (keep).

// CHECK-LABEL: func.func @mlp
// CHECK-DAG:   %[[Q:.+]] = "llm.weight"() {name = "l.gate_up.weight.int4_g64_asym.qweight"} : () -> tensor<192x64xi4>
// CHECK-DAG:   %[[S:.+]] = "llm.weight"() {name = "l.gate_up.weight.int4_g64_asym.scales"} : () -> tensor<192x1xf32>
// CHECK-DAG:   %[[Z:.+]] = "llm.weight"() {name = "l.gate_up.weight.int4_g64_asym.qzeros"} : () -> tensor<192x1xi8>
// CHECK:       %[[Y:.+]] = "llm.quantized_matmul"(%arg0, %[[Q]], %[[S]], %[[Z]]) {act_bits = 0 : i64, bits = 4 : i64, group_size = 64 : i64
// CHECK-SAME:    -> tensor<?x?x192xf32>
// CHECK-DAG:   %[[G:.+]] = "llm.slice"(%[[Y]]) {axis = -1 : i64, size = 96 : i64, start = 0 : i64}
// CHECK-DAG:   %[[U:.+]] = "llm.slice"(%[[Y]]) {axis = -1 : i64, size = 96 : i64, start = 96 : i64}
// CHECK:       %[[A:.+]] = "llm.silu"(%[[G]])
// CHECK:       %[[H:.+]] = "llm.mul"(%[[A]], %[[U]])
// CHECK:       %[[D:.+]] = "llm.quantized_matmul"(%[[H]], {{.+}}) {act_bits = 0 : i64, bits = 4 : i64, group_size = 48 : i64
// CHECK-SAME:    (tensor<?x?x96xf32>, tensor<64x96xi4>, tensor<64x2xf32>, tensor<64x2xi8>) -> tensor<?x?x64xf32>
// CHECK:       %[[R:.+]] = "llm.add"(%[[D]], %{{.+}})
// CHECK:       %[[L:.+]] = "llm.linear"(%[[R]], %{{.+}}) {{.+}} : (tensor<?x?x64xf32>, tensor<100x64xf32>)
// CHECK-NOT:   "llm.fused_linear"
// CHECK-NOT:   f32"} : () -> tensor<192x64xf32>
func.func @mlp(%x: tensor<?x?x64xf32>) -> tensor<?x?x100xf32> {
  %wgu = "llm.weight"() {name = "l.gate_up.weight"} : () -> tensor<192x64xf32>
  %h = "llm.fused_linear"(%x, %wgu) {activation = "swiglu", operandSegmentSizes = array<i32: 1, 1, 0>} : (tensor<?x?x64xf32>, tensor<192x64xf32>) -> tensor<?x?x96xf32> loc("l.mlp.gate_up")
  %wd = "llm.weight"() {name = "l.down_proj.weight"} : () -> tensor<64x96xf32>
  %bd = "llm.weight"() {name = "l.down_proj.bias"} : () -> tensor<64xf32>
  %y = "llm.linear"(%h, %wd, %bd) {operandSegmentSizes = array<i32: 1, 1, 1>} : (tensor<?x?x96xf32>, tensor<64x96xf32>, tensor<64xf32>) -> tensor<?x?x64xf32> loc("l.mlp.down_proj")
  %wh = "llm.weight"() {name = "lm_head.weight"} : () -> tensor<100x64xf32>
  %logits = "llm.linear"(%y, %wh) {operandSegmentSizes = array<i32: 1, 1, 0>} : (tensor<?x?x64xf32>, tensor<100x64xf32>) -> tensor<?x?x100xf32> loc("lm_head")
  return %logits : tensor<?x?x100xf32>
}

