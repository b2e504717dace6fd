-- read_workers: a worker id (optional: none means every worker, in the order of their ids'
-- bytes). Reply: per worker that has a key, {its id, what its key holds, its record's
-- field/value pairs if that is a hash}.
local only = optional()
local ids = only and {only} or redis.call('ZRANGE', p .. ':workers', 0, -1)
local workers = {}
for _, id in ipairs(ids) do
  local found = redis.call('TYPE', worker_key(id)).ok
  if found ~= 'none' then
    local fields = found == 'hash' and redis.call('HGETALL', worker_key(id)) or {}
    workers[#workers + 1] = {id, found, fields}
  end
end
return workers
