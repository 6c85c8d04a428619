-- Claims one send. KEYS[1]: the send's key. ARGV[1]: a fresh message id, ARGV[2]: the
-- pending TTL in seconds. Returns 'claimed:<id>', 'pending:<id>' or 'done:<json>'.
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], 'pending:' .. ARGV[1], 'EX', ARGV[2])
  return 'claimed:' .. ARGV[1]
end
if string.sub(v, 1, 6) == 'retry:' then
  local id = string.sub(v, 7)
  redis.call('SET', KEYS[1], 'pending:' .. id, 'EX', ARGV[2])
  return 'claimed:' .. id
end
return v
