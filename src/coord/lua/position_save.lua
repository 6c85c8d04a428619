-- Saves a relay position only while the lease is current (the fencing check).
-- KEYS[1]: the lease, KEYS[2]: the position. ARGV[1]: the token (owner:epoch),
-- ARGV[2]: the position. Returns 1 if saved, 0 if fenced.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[2], ARGV[2])
  return 1
end
return 0
