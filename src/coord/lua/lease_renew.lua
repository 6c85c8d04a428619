-- Extends a lease while it is still the caller's. KEYS[1]: the lease. ARGV[1]: the token
-- (owner:epoch), ARGV[2]: the TTL in ms. Returns 1 if it was, 0 if not.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
