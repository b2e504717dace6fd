-- migrate: move a prefix written by an older pyergon one step towards the current layout.
-- Arguments: a ZSCAN cursor ('0' to start) and a batch size. Reply: the cursor to call again
-- with, or false once the prefix is at the current layout version. Every step is atomic and
-- idempotent, so processes connecting at once may all take part.
local version_key = p .. ':schema_version'
local version = redis.call('GET', version_key)

if version == '1' then
  -- Version 2 added worker_id and cancel_requested and the worker and children indexes:
  -- backfill them, one ZSCAN batch per call; the last batch sets version 2.
  local scan = redis.call('ZSCAN', p .. ':flows', arg(), 'COUNT', arg())
  for i = 1, #scan[2], 2 do
    local id = scan[2][i]
    local v = redis.call('HMGET', flow_key(id), 'status', 'lease_owner', 'worker_id')
    -- Version 1 kept no worker_id; the lease owner of a running flow is the worker that claimed it.
    if v[1] == 'RUNNING' and v[2] and not v[3] then
      redis.call('HSET', flow_key(id), 'worker_id', v[2])
    end
    local s = read_state(id)
    if s then reindex(id, nil, s) end
  end
  if scan[1] ~= '0' then return scan[1] end
  redis.call('SET', version_key, '2')
  return '0'
end

if version == '2' then
  -- Version 3 added each flow's version field; a flow without one is at version 1, which is
  -- how every script reads it, so no flow is rewritten.
  redis.call('SET', version_key, '3')
  version = '3'
end

if version == '3' then
  -- Version 4 added each flow's lease_losses and last_lost_by fields; a flow without them
  -- lost no lease, which is how they are read, so no flow is rewritten.
  redis.call('SET', version_key, '4')
  version = '4'
end

if version == '4' then
  -- Version 5 added a record's output and progress (its header says where they are; a record
  -- without them has none) and a worker's activity field (none: it runs nothing), so nothing
  -- is rewritten.
  redis.call('SET', version_key, '5')
  version = '5'
end

if version == '5' then
  -- Version 6 added a record's code_hash to its header; a record without one reads as '', the
  -- hash of no known code, so nothing is rewritten.
  redis.call('SET', version_key, '6')
  version = '6'
end

if version == '6' then
  -- Version 7 added a record's earlier attempts to its header; a record without them kept
  -- none, so nothing is rewritten.
  redis.call('SET', version_key, '7')
end
return false
