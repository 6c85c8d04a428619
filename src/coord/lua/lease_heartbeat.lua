-- Records a consumer alive and returns the live ones. KEYS[1]: the sorted set of
-- consumers (score = expiry in ms). ARGV[1]: the consumer, ARGV[2]: its expiry,
-- ARGV[3]: now (ms), ARGV[4]: the set's own TTL in ms.
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return redis.call('ZRANGE', KEYS[1], 0, -1)
