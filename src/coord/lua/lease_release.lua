-- Gives a lease back while it is still the caller's. KEYS[1]: the lease. ARGV[1]: the
-- token (owner:epoch). Returns 1 if it was, 0 if not.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
