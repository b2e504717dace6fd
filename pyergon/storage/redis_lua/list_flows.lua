-- list_flows: statuses (counted), then optional flow type, worker id, parent id, created_after,
-- created_before, the cursor (counted: created_at, flow id), limit, offset, flow ids (counted;
-- none: any flow).
-- Reply: the page's flows' fields, newest first (created_at, then id, descending).
local statuses, flow_type, worker, parent = counted(), optional(), optional(), optional()
local created_after, created_before, after = optional(), optional(), counted()
local limit, offset = tonumber(arg()), tonumber(arg())
local ids = counted()

-- How many entries of an index come before (score, id) in its ascending order. Equal scores
-- are rare, so the binary search over them by rank is usually empty.
local function count_before(key, score, id)
  local lo = redis.call('ZCOUNT', key, '-inf', '(' .. score)
  local hi = lo + redis.call('ZCOUNT', key, score, score)
  while lo < hi do
    local middle = math.floor((lo + hi) / 2)
    if bytes_before(redis.call('ZRANGE', key, middle, middle)[1], id) then
      lo = middle + 1
    else
      hi = middle
    end
  end
  return lo
end

-- The ascending ranks [lo, hi) of an index that the created_at bounds and the cursor allow.
local function rank_range(key)
  local lo = created_after and redis.call('ZCOUNT', key, '-inf', '(' .. created_after) or 0
  local hi = redis.call('ZCARD', key)
  if created_before then
    hi = math.min(hi, redis.call('ZCOUNT', key, '-inf', '(' .. created_before))
  end
  if after[1] then hi = math.min(hi, count_before(key, after[1], after[2])) end
  return lo, math.max(lo, hi)
end

-- Each plan is a set of indexes whose union holds every match, and the filters it implies.
-- The plan with the fewest entries in range is walked; the other filters are checked per flow.
local plans = {}
if #statuses > 0 then
  local keys = {}
  for i, status in ipairs(statuses) do
    keys[i] = p .. ':status:' .. status .. (flow_type and (':' .. flow_type) or '')
  end
  plans[#plans + 1] = {keys = keys, status = true, flow_type = flow_type ~= nil}
end
if flow_type then plans[#plans + 1] = {keys = {p .. ':type:' .. flow_type}, flow_type = true} end
if worker then plans[#plans + 1] = {keys = {p .. ':worker:' .. worker}, worker = true} end
if parent then plans[#plans + 1] = {keys = {p .. ':children:' .. parent}, parent = true} end
if #plans == 0 then plans[1] = {keys = {p .. ':flows'}} end

local plan, sources, fewest = nil, nil, nil
for _, candidate in ipairs(plans) do
  local ranges, size = {}, 0
  for i, key in ipairs(candidate.keys) do
    local lo, hi = rank_range(key)
    ranges[i] = {key = key, lo = lo, next = hi - 1, buffer = {}, at = 1}
    size = size + hi - lo
  end
  if fewest == nil or size < fewest then plan, sources, fewest = candidate, ranges, size end
end

local allowed = {}
for _, status in ipairs(statuses) do allowed[status] = true end
local check_status = #statuses > 0 and not plan.status
local check_type = flow_type ~= nil and not plan.flow_type
local check_worker = worker ~= nil and not plan.worker
local check_parent = parent ~= nil and not plan.parent
local exact = not (check_status or check_type or check_worker or check_parent)

local function newer(a, b)
  return a[2] > b[2] or (a[2] == b[2] and bytes_before(b[1], a[1]))
end

-- Chosen flows: read each by id, keep those the filters and the cursor allow, sort, page.
if #ids > 0 then
  -- Lua 5.1's tonumber reads no 'inf'.
  local low = created_after and tonumber(created_after) or -math.huge
  local high = created_before and tonumber(created_before) or math.huge
  local bound = after[1] and {after[2], tonumber(after[1])}
  local chosen = {}
  for _, id in ipairs(ids) do
    local v = redis.call('HMGET', flow_key(id), 'created_at', 'status', 'flow_type',
      'worker_id', 'parent_flow_id')
    local entry = v[1] and {id, tonumber(v[1])}
    if entry and (#statuses == 0 or allowed[v[2]] == true)
      and (not flow_type or v[3] == flow_type) and (not worker or v[4] == worker)
      and (not parent or v[5] == parent) and entry[2] >= low and entry[2] < high
      and (not bound or newer(bound, entry)) then
      chosen[#chosen + 1] = entry
    end
  end
  table.sort(chosen, newer)
  local page = {}
  for i = offset + 1, math.min(#chosen, offset + limit) do
    page[#page + 1] = redis.call('HGETALL', flow_key(chosen[i][1]))
  end
  return page
end

-- The flows of one index, single and exact: skip the offset by rank, read just the page.
if exact and #sources == 1 then
  local source = sources[1]
  local last = source.next - offset
  local first = math.max(source.lo, last - limit + 1)
  local page = {}
  if last < first then return page end
  local ids = redis.call('ZRANGE', source.key, first, last)
  for i = #ids, 1, -1 do page[#page + 1] = redis.call('HGETALL', flow_key(ids[i])) end
  return page
end

local chunk = math.min(math.max(limit + offset, 16), 512)

-- The newest unread entry {id, score} of a source, reading it newest first in chunks.
local function head(source)
  if source.at > #source.buffer then
    if source.next < source.lo then return nil end
    local first = math.max(source.lo, source.next - chunk + 1)
    local items = redis.call('ZRANGE', source.key, first, source.next, 'WITHSCORES')
    source.next, source.buffer, source.at = first - 1, {}, 1
    for i = #items - 1, 1, -2 do
      source.buffer[#source.buffer + 1] = {items[i], tonumber(items[i + 1])}
    end
    if #source.buffer == 0 then return nil end
  end
  return source.buffer[source.at]
end

local function matches(id)
  if exact then return true end
  local v = redis.call('HMGET', flow_key(id), 'status', 'flow_type', 'worker_id',
    'parent_flow_id')
  return (not check_status or allowed[v[1]] == true)
    and (not check_type or v[2] == flow_type)
    and (not check_worker or v[3] == worker)
    and (not check_parent or v[4] == parent)
end

local page, skipped = {}, 0
while #page < limit do
  local best, best_source = nil, nil
  for _, source in ipairs(sources) do
    local entry = head(source)
    if entry and (best == nil or newer(entry, best)) then best, best_source = entry, source end
  end
  if best == nil then break end
  best_source.at = best_source.at + 1
  if matches(best[1]) then
    if skipped < offset then
      skipped = skipped + 1
    else
      page[#page + 1] = redis.call('HGETALL', flow_key(best[1]))
    end
  end
end
return page
