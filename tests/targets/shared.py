"""Constants the target tests share."""


# The tpu-like artifact the tests share: small buckets so batch chunking, batch padding,
# length padding and the "no bucket fits" refusal are all reachable with the tiny model
# (max_seq_len 128 -> 8 pages of 16 per sequence; pool 1 + 4 * 8 = 33 pages).
TPU_BUCKETS = "batch=1,4;len=16,64"
