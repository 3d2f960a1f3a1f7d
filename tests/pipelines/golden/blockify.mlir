// RUN: llmirc opt %s --passes='blockify-kv-cache{block_size=32}' | filecheck %s

// CHECK-LABEL: func.func @decode
// CHECK-SAME:  (%arg0: tensor<?x1x2x8xf32>, %arg1: tensor<?x1xi64>, %arg2: tensor<?x?xi64>, %arg3: !llm.paged_kv_cache<1 : i64, 1 : i64, 8 : i64, 32 : i64, f32>)
// CHECK-SAME:  -> (tensor<?x1x2x8xf32>, !llm.paged_kv_cache<1 : i64, 1 : i64, 8 : i64, 32 : i64, f32>)
// CHECK:       %[[P:.+]] = "llm.paged_append_kv"(%arg3, %arg2, %{{.+}}, %{{.+}}, %arg1) {layer = 0 : i64}
// CHECK:       "llm.paged_attention"(%arg0, %[[P]], %arg2, %arg1)
func.func @decode(%q: tensor<?x1x2x8xf32>, %pos: tensor<?x1xi64>, %cache: !llm.kv_cache<1 : i64, 1 : i64, 8 : i64, 64 : i64, f32>) -> (tensor<?x1x2x8xf32>, !llm.kv_cache<1 : i64, 1 : i64, 8 : i64, 64 : i64, f32>) {
  %k = "llm.slice"(%q) {axis = 2 : i64, start = 0 : i64, size = 1 : i64} : (tensor<?x1x2x8xf32>) -> tensor<?x1x1x8xf32>
  %c = "llm.append_kv"(%cache, %k, %k, %pos) {layer = 0 : i64} : (!llm.kv_cache<1 : i64, 1 : i64, 8 : i64, 64 : i64, f32>, tensor<?x1x1x8xf32>, tensor<?x1x1x8xf32>, tensor<?x1xi64>) -> !llm.kv_cache<1 : i64, 1 : i64, 8 : i64, 64 : i64, f32>
  %a = "llm.attention"(%q, %c, %pos) {layer = 0 : i64, num_heads = 2 : i64, num_kv_heads = 1 : i64, head_dim = 8 : i64, scale = 0.35355339 : f32, window = 0 : i64, softcap = 0.0 : f32} : (tensor<?x1x2x8xf32>, !llm.kv_cache<1 : i64, 1 : i64, 8 : i64, 64 : i64, f32>, tensor<?x1xi64>) -> tensor<?x1x2x8xf32>
  return %a, %c : tensor<?x1x2x8xf32>, !llm.kv_cache<1 : i64, 1 : i64, 8 : i64, 64 : i64, f32>
}
