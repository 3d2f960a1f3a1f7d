// RUN: llmirc opt %s --passes=fuse-qkv | filecheck %s
// Three projections of one input, each split into heads -> one matmul on the concatenated weight.

// CHECK-LABEL: func.func @attn_proj
// CHECK-DAG:   %[[WQ:.+]] = "llm.weight"() {name = "l.q_proj.weight"}
// CHECK-DAG:   %[[WK:.+]] = "llm.weight"() {name = "l.k_proj.weight"}
// CHECK-DAG:   %[[WV:.+]] = "llm.weight"() {name = "l.v_proj.weight"}
// CHECK:       %[[W:.+]] = "llm.concat"(%[[WQ]], %[[WK]], %[[WV]]) {axis = 0 : i64} : (tensor<64x32xf32>, tensor<16x32xf32>, tensor<16x32xf32>) -> tensor<96x32xf32>
// CHECK:       %[[Y:.+]] = "llm.linear"(%arg0, %[[W]])
// CHECK-DAG:   "llm.slice"(%[[Y]]) {axis = -1 : i64, size = 64 : i64, start = 0 : i64}
// CHECK-DAG:   "llm.slice"(%[[Y]]) {axis = -1 : i64, size = 16 : i64, start = 64 : i64}
// CHECK-DAG:   "llm.slice"(%[[Y]]) {axis = -1 : i64, size = 16 : i64, start = 80 : i64}
// CHECK-NOT:   "llm.linear"
func.func @attn_proj(%x: tensor<?x?x32xf32>) -> (tensor<?x?x4x16xf32>, tensor<?x?x1x16xf32>, tensor<?x?x1x16xf32>) {
  %wq = "llm.weight"() {name = "l.q_proj.weight"} : () -> tensor<64x32xf32> loc("l.q_proj.weight")
  %q = "llm.linear"(%x, %wq) {operandSegmentSizes = array<i32: 1, 1, 0>} : (tensor<?x?x32xf32>, tensor<64x32xf32>) -> tensor<?x?x64xf32> loc("l.q_proj")
  %qh = "llm.reshape"(%q) {shape = array<i64: 0, 0, 4, 16>} : (tensor<?x?x64xf32>) -> tensor<?x?x4x16xf32>
  %wk = "llm.weight"() {name = "l.k_proj.weight"} : () -> tensor<16x32xf32>
  %k = "llm.linear"(%x, %wk) {operandSegmentSizes = array<i32: 1, 1, 0>} : (tensor<?x?x32xf32>, tensor<16x32xf32>) -> tensor<?x?x16xf32> loc("l.k_proj")
  %kh = "llm.reshape"(%k) {shape = array<i64: 0, 0, 1, 16>} : (tensor<?x?x16xf32>) -> tensor<?x?x1x16xf32>
  %wv = "llm.weight"() {name = "l.v_proj.weight"} : () -> tensor<16x32xf32>
  %v = "llm.linear"(%x, %wv) {operandSegmentSizes = array<i32: 1, 1, 0>} : (tensor<?x?x32xf32>, tensor<16x32xf32>) -> tensor<?x?x16xf32> loc("l.v_proj")
  %vh = "llm.reshape"(%v) {shape = array<i64: 0, 0, 1, 16>} : (tensor<?x?x16xf32>) -> tensor<?x?x1x16xf32>
  return %qh, %kh, %vh : tensor<?x?x4x16xf32>, tensor<?x?x1x16xf32>, tensor<?x?x1x16xf32>
}

// Linears on one input that do not feed heads are left alone.
// CHECK-LABEL: func.func @not_heads
// CHECK-COUNT-2: "llm.linear"
// CHECK-NOT:   "llm.concat"
func.func @not_heads(%x: tensor<?x32xf32>) -> (tensor<?x8xf32>, tensor<?x8xf32>) {
  %w1 = "llm.weight"() {name = "a"} : () -> tensor<8x32xf32>
  %a = "llm.linear"(%x, %w1) {operandSegmentSizes = array<i32: 1, 1, 0>} : (tensor<?x32xf32>, tensor<8x32xf32>) -> tensor<?x8xf32>
  %w2 = "llm.weight"() {name = "b"} : () -> tensor<8x32xf32>
  %b = "llm.linear"(%x, %w2) {operandSegmentSizes = array<i32: 1, 1, 0>} : (tensor<?x32xf32>, tensor<8x32xf32>) -> tensor<?x8xf32>
  return %a, %b : tensor<?x8xf32>, tensor<?x8xf32>
}
