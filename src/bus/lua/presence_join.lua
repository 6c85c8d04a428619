-- Presence lives in one sorted set per user: member = connection id, score = the time
-- (ms) it expires unless refreshed. Expired entries (a crashed gateway's) are ignored
-- and swept on the next write; the key itself expires when nobody refreshes it.
-- KEYS[1]: the set. ARGV: conn, now, expires, key ttl. Returns the live count before.
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
local before = redis.call('ZCARD', KEYS[1])
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return before
