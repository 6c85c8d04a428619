-- KEYS[1]: a user's presence set. ARGV: conn, now. Returns {removed, live count after}.
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[2])
return {removed, redis.call('ZCARD', KEYS[1])}
