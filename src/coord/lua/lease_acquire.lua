-- Takes a partition's lease if nobody holds it. KEYS[1]: the lease, KEYS[2]: its epoch
-- counter. ARGV[1]: the owner, ARGV[2]: the TTL in ms. Returns the new epoch, or false.
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local e = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. e, 'PX', ARGV[2])
return e
