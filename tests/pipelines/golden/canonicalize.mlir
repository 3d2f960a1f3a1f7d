// RUN: llmirc opt %s --passes=canonicalize | filecheck %s

// CHECK-LABEL: func.func @chained
// CHECK:       %[[R:.+]] = "llm.reshape"(%arg0) {shape = array<i64: 0, 0, 64>}
// CHECK-NOT:   "llm.reshape"
// CHECK:       return %[[R]]
func.func @chained(%x: tensor<?x?x4x16xf32>) -> tensor<?x?x64xf32> {
  %0 = "llm.reshape"(%x) {shape = array<i64: 0, 0, 2, 32>} : (tensor<?x?x4x16xf32>) -> tensor<?x?x2x32xf32>
  %1 = "llm.reshape"(%0) {shape = array<i64: 0, 0, 64>} : (tensor<?x?x2x32xf32>) -> tensor<?x?x64xf32>
  return %1 : tensor<?x?x64xf32>
}

// CHECK-LABEL: func.func @identity
// CHECK-NOT:   "llm.reshape"
// CHECK:       return %arg0
func.func @identity(%x: tensor<?x8xf32>) -> tensor<?x8xf32> {
  %0 = "llm.reshape"(%x) {shape = array<i64: 0, 8>} : (tensor<?x8xf32>) -> tensor<?x8xf32>
  return %0 : tensor<?x8xf32>
}
