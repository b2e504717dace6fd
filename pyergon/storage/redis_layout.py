"""The Redis backend's layout: its keys, the Lua scripts that change them, and record encodings.

Every multi-key change is one atomic script. Keys under the prefix ``P`` (written ``{P}``: the
braces put every key of a prefix in one Redis Cluster hash slot and keep nested prefixes such as
``app`` and ``app:x`` apart):

* ``{P}:flow:<id>`` — hash, one field per flow attribute, bytes stored as they are; a ``None``
  attribute has no field, nor has ``cancel_requested`` while false (it is ``"1"`` when true);
  the error is spread over ``error_type`` ... ``error_payload``.
* ``{P}:inv:<id>`` — hash, field ``"<sequence>:<sub_sequence>"`` → an encoded record: one line of
  JSON header, then the raw result bytes and error payload bytes (their lengths in the header).
* ``{P}:sig:<id>`` — hash, signal name → the ``sent_at`` time, a newline, the payload bytes.
* ``{P}:ids`` — set of every id that has a flow, records or signals (what ``reset`` deletes).
* History indexes, sorted sets scored by ``created_at`` (ties by id, as Redis orders equal
  scores): ``{P}:flows``, ``{P}:type:<type>``, ``{P}:status:<status>``,
  ``{P}:status:<status>:<type>``, ``{P}:worker:<worker_id>`` and ``{P}:children:<parent id>``;
  ``{P}:status:PENDING:<type>`` is also the ready queue.
* Queue indexes: ``{P}:timers:<type>`` and ``{P}:timers`` (``SUSPENDED`` with a wake time, scored
  by it) and ``{P}:leases:<type>`` (``RUNNING`` with a lease, scored by its expiry).
* ``{P}:schema_version`` — the layout version; ``{P}:work`` — the pub/sub wake-up channel.

Version 2 added the ``worker_id`` and ``cancel_requested`` fields and the worker and children
indexes; the ``migrate_from_v1`` script backfills them for a version 1 prefix.

Every script takes ``ARGV[1]`` = prefix, ``ARGV[2]`` = the caller's origin id (published as the
wake-up message, so a process can ignore its own) and ``ARGV[3]`` = the caller's wall-clock time
for ``updated_at``. Scores and times stay the strings Python wrote (``repr`` of a float), so no
precision is lost on the way through Lua.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from string import Template
from typing import Any

from pyergon.core.records import Invocation, ScheduledFlow, StoredError
from pyergon.core.status import InvocationStatus, OperationKind, TaskStatus
from pyergon.storage.base import FlowUpdate

__all__ = [
    "SCRIPTS",
    "counted",
    "decode_invocation",
    "decode_signal",
    "encode_invocation",
    "encode_signal",
    "flow_changes",
    "flow_fields",
    "flow_from_hash",
    "flow_from_reply",
    "log_from_hash",
    "number",
    "optional",
]

_TEXT_FIELDS = frozenset(
    (
        "flow_id",
        "flow_type",
        "parent_flow_id",
        "parent_sequence",
        "lease_owner",
        "lease_token",
        "worker_id",
    )
)
_FLOAT_FIELDS = frozenset(("created_at", "updated_at", "wake_at", "lease_expires_at"))
_ERROR_FIELDS = ("error_type", "error_message", "error_traceback", "error_payload")


def _lua_set(values: list[str]) -> str:
    """A Lua table literal usable as a set of ``values``."""
    return "{" + ", ".join(f"[{value!r}] = true" for value in values) + "}"


# -- scripts -------------------------------------------------------------------------------------

_PRELUDE = """
local p = '{' .. ARGV[1] .. '}'
local origin = ARGV[2]
local clock = ARGV[3]
local cursor = 4
local FINAL_FLOW = $final_flow
local FINAL_RECORD = $final_record
local LEASE_FIELDS = {'lease_owner', 'lease_token', 'lease_expires_at'}

local function arg()
  local value = ARGV[cursor]
  cursor = cursor + 1
  return value
end

local function counted()
  local list = {}
  for i = 1, tonumber(arg()) do list[i] = arg() end
  return list
end

-- An optional argument: a counted list of zero or one value.
local function optional()
  return counted()[1]
end

-- Byte order, the order of Redis' equal-score ties (Lua's ``<`` on strings follows the locale).
local function bytes_before(a, b)
  for i = 1, math.min(#a, #b) do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

local function flow_key(id) return p .. ':flow:' .. id end

local function read_state(id)
  local v = redis.call('HMGET', flow_key(id), 'status', 'flow_type', 'created_at', 'wake_at',
    'lease_expires_at', 'worker_id', 'parent_flow_id', 'cancel_requested')
  if not v[1] then return nil end
  return {status = v[1], flow_type = v[2], created_at = v[3],
          wake_at = v[4] or nil, lease_expires_at = v[5] or nil,
          worker_id = v[6] or nil, parent_flow_id = v[7] or nil,
          cancel_requested = v[8] == '1'}
end

-- The sorted sets a flow in state ``s`` belongs to, with its score in each.
local function index_entries(s)
  local t, c = s.flow_type, s.created_at
  local entries = {
    [p .. ':flows'] = c,
    [p .. ':type:' .. t] = c,
    [p .. ':status:' .. s.status] = c,
    [p .. ':status:' .. s.status .. ':' .. t] = c,
  }
  if s.worker_id then entries[p .. ':worker:' .. s.worker_id] = c end
  if s.parent_flow_id then entries[p .. ':children:' .. s.parent_flow_id] = c end
  if s.status == 'SUSPENDED' and s.wake_at then
    entries[p .. ':timers'] = s.wake_at
    entries[p .. ':timers:' .. t] = s.wake_at
  elseif s.status == 'RUNNING' and s.lease_expires_at then
    entries[p .. ':leases:' .. t] = s.lease_expires_at
  end
  return entries
end

local function reindex(id, old, new)
  local before = old and index_entries(old) or {}
  local after = new and index_entries(new) or {}
  for key in pairs(before) do
    if after[key] == nil then redis.call('ZREM', key, id) end
  end
  for key, score in pairs(after) do
    if before[key] ~= score then redis.call('ZADD', key, score, id) end
  end
end

local notified = 0
local function notify()
  if notified == 0 then
    redis.call('PUBLISH', p .. ':work', origin)
    notified = 1
  end
end

local function is_work(s)
  return s.status == 'PENDING' or (s.status == 'SUSPENDED' and s.wake_at ~= nil)
end

-- A running flow asked to cancel ends CANCELLED when it would suspend or requeue.
local function cancelled_instead(s, status)
  if s.status == 'RUNNING' and s.cancel_requested
      and (status == 'SUSPENDED' or status == 'PENDING') then
    return 'CANCELLED'
  end
  return status
end

-- Set a flow's status and fields; leaving RUNNING drops the lease, PENDING clears a
-- cancellation request. Notifies when the flow is work.
local function change_flow(id, old, status, sets, dels)
  local key = flow_key(id)
  if status ~= 'RUNNING' then
    for _, field in ipairs(LEASE_FIELDS) do dels[#dels + 1] = field end
  end
  if status == 'PENDING' then dels[#dels + 1] = 'cancel_requested' end
  if #dels > 0 then redis.call('HDEL', key, unpack(dels)) end
  redis.call('HSET', key, 'status', status, 'updated_at', clock, unpack(sets))
  local new = read_state(id)
  reindex(id, old, new)
  if is_work(new) then notify() end
  return new
end

local function wake(id)
  local s = read_state(id)
  if s and s.status == 'SUSPENDED' then
    change_flow(id, s, 'PENDING', {}, {'wake_at'})
  end
end

-- A child reaching a final status wakes its suspended parent.
local function wake_parent(new)
  if FINAL_FLOW[new.status] and new.parent_flow_id then wake(new.parent_flow_id) end
end

local function record_header(value)
  return cjson.decode(string.sub(value, 1, string.find(value, '\\n', 1, true) - 1))
end

local function delete_everything_of(id)
  local s = read_state(id)
  if s then reindex(id, s, nil) end
  redis.call('UNLINK', flow_key(id), p .. ':inv:' .. id, p .. ':sig:' .. id)
  redis.call('SREM', p .. ':ids', id)
  return s ~= nil
end

-- First writer wins: returns the final record that holds the position, or false once stored.
local function record(id, position, value)
  local key = p .. ':inv:' .. id
  local existing = redis.call('HGET', key, position)
  if existing and FINAL_RECORD[record_header(existing).status] then return existing end
  redis.call('HSET', key, position, value)
  redis.call('SADD', p .. ':ids', id)
  return false
end

-- The holder of the lease leaves the flow in status; returns whether it held the lease.
local function release(id, token, status, sets, dels, signals, children)
  local s = read_state(id)
  if not s or s.status ~= 'RUNNING' then return false end
  if redis.call('HGET', flow_key(id), 'lease_token') ~= token then return false end
  if status == 'SUSPENDED' then
    for _, name in ipairs(signals) do
      if redis.call('HEXISTS', p .. ':sig:' .. id, name) == 1 then status = 'PENDING' end
    end
    for _, child in ipairs(children) do
      local child_status = redis.call('HGET', flow_key(child), 'status')
      if child_status and FINAL_FLOW[child_status] then status = 'PENDING' end
    end
  end
  wake_parent(change_flow(id, s, cancelled_instead(s, status), sets, dels))
  return true
end
"""

_CREATE_FLOW = """
local id = arg()
local key = flow_key(id)
if redis.call('EXISTS', key) == 1 then return {0, 0, redis.call('HGETALL', key)} end
redis.call('HSET', key, unpack(ARGV, cursor))
redis.call('SADD', p .. ':ids', id)
local s = read_state(id)
reindex(id, nil, s)
if s.status == 'PENDING' then notify() end
return {1, notified, false}
"""

_UPDATE_FLOW = """
local id, status = arg(), arg()
local guarded = arg() == '1'
local expected = counted()
local sets, dels = counted(), counted()
local s = read_state(id)
if not s then return {0, false} end
if guarded then
  local allowed = false
  for _, candidate in ipairs(expected) do
    if s.status == candidate then allowed = true end
  end
  if not allowed then return {0, false} end
end
wake_parent(change_flow(id, s, cancelled_instead(s, status), sets, dels))
return {notified, redis.call('HGETALL', flow_key(id))}
"""

_CLAIM_FLOWS = """
-- Each claimed flow's lease token is the caller's fresh token followed by the flow's place.
-- With logs, each claimed flow's reply is {its fields, its records' fields and values}.
local now, expires, worker, token, limit = arg(), arg(), arg(), arg(), tonumber(arg())
local due_by, with_logs = arg(), arg() == '1'
local types = counted()

-- Candidates in queue order: ready time (wake time of a due timer, else 0), created_at, id.
local candidates = {}
local function consider(ready, created, id)
  candidates[#candidates + 1] = {tonumber(ready), tonumber(created), id}
end
local function before(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  if a[2] ~= b[2] then return a[2] < b[2] end
  return bytes_before(a[3], b[3])
end
local function created_at(id) return redis.call('HGET', flow_key(id), 'created_at') end

for _, t in ipairs(types) do
  local pending = redis.call('ZRANGE', p .. ':status:PENDING:' .. t, 0, limit - 1, 'WITHSCORES')
  for i = 1, #pending, 2 do consider(0, pending[i + 1], pending[i]) end
  local timers = p .. ':timers:' .. t
  local due = redis.call('ZRANGEBYSCORE', timers, '-inf', due_by, 'WITHSCORES', 'LIMIT', 0, limit)
  local seen = {}
  for i = 1, #due, 2 do
    consider(due[i + 1], created_at(due[i]), due[i])
    seen[due[i]] = true
  end
  if #due == 2 * limit then
    -- Flows due at the same time are ordered by age, not id: take every one at the last time.
    local last = due[#due]
    for _, id in ipairs(redis.call('ZRANGEBYSCORE', timers, last, last)) do
      if not seen[id] then consider(last, created_at(id), id) end
    end
  end
  -- Expired leases are few (the flows of dead workers); each is ordered by created_at.
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', p .. ':leases:' .. t, '-inf', '(' .. now)) do
    consider(0, created_at(id), id)
  end
end
table.sort(candidates, before)
local claimed = {}
for i = 1, math.min(limit, #candidates) do
  local id = candidates[i][3]
  change_flow(id, read_state(id), 'RUNNING', {'lease_owner', worker, 'lease_token', token .. i,
    'lease_expires_at', expires, 'worker_id', worker}, {})
  claimed[i] = redis.call('HGETALL', flow_key(id))
  if with_logs then claimed[i] = {claimed[i], redis.call('HGETALL', p .. ':inv:' .. id)} end
end
return claimed
"""

_RENEW_LEASE = """
local id, token, expires = arg(), arg(), arg()
local s = read_state(id)
if not s or s.status ~= 'RUNNING' then return 0 end
if redis.call('HGET', flow_key(id), 'lease_token') ~= token then return 0 end
redis.call('HSET', flow_key(id), 'lease_expires_at', expires)
reindex(id, s, read_state(id))
return 1
"""

_RELEASE_FLOW = """
local id, token, status = arg(), arg(), arg()
local sets, dels = counted(), counted()
local signals, children = counted(), counted()
if not release(id, token, status, sets, dels, signals, children) then return {0, false} end
return {notified, redis.call('HGETALL', flow_key(id))}
"""

_REQUEST_CANCEL = """
local id = arg()
local s = read_state(id)
if not s then return {0, false} end
if s.status == 'RUNNING' then
  redis.call('HSET', flow_key(id), 'cancel_requested', '1', 'updated_at', clock)
  notify()
elseif s.status == 'PENDING' or s.status == 'SUSPENDED' then
  wake_parent(change_flow(id, s, 'CANCELLED', {}, {'wake_at'}))
end
return {notified, redis.call('HGETALL', flow_key(id))}
"""

_CANCEL_REQUESTS = """
local requested = {}
for i = cursor, #ARGV do
  local v = redis.call('HMGET', flow_key(ARGV[i]), 'status', 'cancel_requested')
  if v[1] == 'RUNNING' and v[2] == '1' then requested[#requested + 1] = ARGV[i] end
end
return requested
"""

_RECORD_INVOCATION = """
local id, position, value = arg(), arg(), arg()
return record(id, position, value)
"""

_SAVE_PROGRESS = """
-- Records in order, stopping at one whose position holds a different final record (returned
-- with its place, for the caller to compare); then, if none did, the flow's change of state.
local id, count = arg(), tonumber(arg())
for i = 1, count do
  local position, value = arg(), arg()
  local existing = record(id, position, value)
  if existing and existing ~= value then return {i, existing, 0, false} end
end
local kind = arg()
if kind == 'none' then return {0, false, 0, false} end
local status = arg()
local changed = false
if kind == 'release' then
  local token = arg()
  local sets, dels = counted(), counted()
  local signals, children = counted(), counted()
  changed = release(id, token, status, sets, dels, signals, children)
else
  local sets, dels = counted(), counted()
  local s = read_state(id)
  if s then
    wake_parent(change_flow(id, s, cancelled_instead(s, status), sets, dels))
    changed = true
  end
end
if not changed then return {0, false, notified, false} end
return {0, false, notified, redis.call('HGETALL', flow_key(id))}
"""

_DELETE_FAILED_INVOCATIONS = """
local key = p .. ':inv:' .. arg()
local fields = redis.call('HGETALL', key)
local failed = {}
for i = 1, #fields, 2 do
  if record_header(fields[i + 1]).status == '$failed' then failed[#failed + 1] = fields[i] end
end
if #failed > 0 then redis.call('HDEL', key, unpack(failed)) end
return #failed
"""

_STORE_SIGNAL = """
local id, name, value = arg(), arg(), arg()
if redis.call('HSETNX', p .. ':sig:' .. id, name, value) == 0 then return {0, 0} end
redis.call('SADD', p .. ':ids', id)
for _, record in ipairs(redis.call('HVALS', p .. ':inv:' .. id)) do
  if string.find(record, '$waiting', 1, true) then
    local header = record_header(record)
    if header.kind == '$signal' and header.name == name
        and header.status == '$waiting' then
      wake(id)
      break
    end
  end
end
return {1, notified}
"""

_LIST_FLOWS = """
local statuses, flow_type, worker, parent = counted(), optional(), optional(), optional()
local created_after, created_before, after = optional(), optional(), counted()
local limit, offset = tonumber(arg()), tonumber(arg())

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

local function newer(a, b)
  return a[2] > b[2] or (a[2] == b[2] and bytes_before(b[1], a[1]))
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
"""

_COUNT_FLOWS = """
local suffix = optional()
suffix = suffix and (':' .. suffix) or ''
local counts = {}
for i = cursor, #ARGV do
  counts[#counts + 1] = redis.call('ZCARD', p .. ':status:' .. ARGV[i] .. suffix)
end
return counts
"""

_DELETE_FLOW = """
return delete_everything_of(arg()) and 1 or 0
"""

_RESET = """
for _, id in ipairs(redis.call('SMEMBERS', p .. ':ids')) do delete_everything_of(id) end
redis.call('DEL', p .. ':ids')
return 0
"""

# Backfills version 2's fields and indexes for one ZSCAN batch of a version 1 prefix; the last
# batch sets the version in the same atomic step. Idempotent, so processes connecting at once
# may all run it; returns the next scan cursor, or false once the prefix is at version 2.
_MIGRATE_FROM_V1 = """
local version_key = p .. ':schema_version'
if redis.call('GET', version_key) ~= '1' then return false end
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
return false
"""

_CONSTANTS = {
    "final_flow": _lua_set([status.value for status in TaskStatus if status.is_final]),
    "final_record": _lua_set([status.value for status in InvocationStatus if status.is_final]),
    "failed": InvocationStatus.FAILED.value,
    "waiting": InvocationStatus.WAITING_FOR_SIGNAL.value,
    "signal": OperationKind.SIGNAL.value,
}

SCRIPTS: dict[str, str] = {
    name: Template(_PRELUDE + body).substitute(_CONSTANTS)
    for name, body in {
        "create_flow": _CREATE_FLOW,
        "update_flow": _UPDATE_FLOW,
        "claim_flows": _CLAIM_FLOWS,
        "renew_lease": _RENEW_LEASE,
        "release_flow": _RELEASE_FLOW,
        "request_cancel": _REQUEST_CANCEL,
        "cancel_requests": _CANCEL_REQUESTS,
        "record_invocation": _RECORD_INVOCATION,
        "save_progress": _SAVE_PROGRESS,
        "delete_failed_invocations": _DELETE_FAILED_INVOCATIONS,
        "store_signal": _STORE_SIGNAL,
        "list_flows": _LIST_FLOWS,
        "count_flows": _COUNT_FLOWS,
        "delete_flow": _DELETE_FLOW,
        "reset": _RESET,
        "migrate_from_v1": _MIGRATE_FROM_V1,
    }.items()
}
"""Script name → Lua source; the backend loads them all on ``connect()``."""


# -- encodings -----------------------------------------------------------------------------------


def number(value: float) -> str:
    """A float as text that Redis and Lua parse back to exactly the same double."""
    return repr(float(value))


def _optional_number(value: float | None) -> str | None:
    return None if value is None else number(value)


def counted(values: Sequence[str | bytes]) -> list[str | bytes]:
    """``values`` preceded by their count, the form in which the scripts read lists."""
    return [str(len(values)), *values]


def optional(value: str | None) -> list[str | bytes]:
    """An optional script argument: ``counted`` with zero values for ``None``, else one."""
    return counted([] if value is None else [value])


def _error_values(error: StoredError | None) -> tuple[str | bytes | None, ...]:
    """The values of the error fields (all ``None`` for no error)."""
    if error is None:
        return (None,) * len(_ERROR_FIELDS)
    return (error.type_name, error.message, error.traceback, error.payload)


def _pairs(values: Mapping[str, str | bytes | None]) -> list[str | bytes]:
    """Flat field/value pairs of the values that are not ``None``."""
    return [item for name, value in values.items() if value is not None for item in (name, value)]


def flow_fields(flow: ScheduledFlow) -> list[str | bytes]:
    """Flat field/value pairs of a flow's hash; ``None`` attributes have no field."""
    return _pairs(
        {
            "flow_id": flow.flow_id,
            "flow_type": flow.flow_type,
            "payload": flow.payload,
            "status": flow.status.value,
            "created_at": number(flow.created_at),
            "updated_at": number(flow.updated_at),
            "result": flow.result,
            "attempt": str(flow.attempt),
            "wake_at": _optional_number(flow.wake_at),
            "parent_flow_id": flow.parent_flow_id,
            "parent_sequence": flow.parent_sequence,
            "lease_owner": flow.lease_owner,
            "lease_token": flow.lease_token,
            "lease_expires_at": _optional_number(flow.lease_expires_at),
            "worker_id": flow.worker_id,
            "cancel_requested": "1" if flow.cancel_requested else None,
            **dict(zip(_ERROR_FIELDS, _error_values(flow.error), strict=True)),
        }
    )


def flow_changes(
    *,
    result: bytes | FlowUpdate | None,
    error: StoredError | FlowUpdate | None,
    wake_at: float | FlowUpdate | None,
    attempt: int | FlowUpdate,
) -> list[str | bytes]:
    """Script arguments for a change of state: the counted fields to set, then to delete."""
    changes: dict[str, str | bytes | None] = {}
    if not isinstance(result, FlowUpdate):
        changes["result"] = result
    if not isinstance(wake_at, FlowUpdate):
        changes["wake_at"] = _optional_number(wake_at)
    if not isinstance(attempt, FlowUpdate):
        changes["attempt"] = str(attempt)
    if not isinstance(error, FlowUpdate):
        changes.update(zip(_ERROR_FIELDS, _error_values(error), strict=True))
    deletes = [name for name, value in changes.items() if value is None]
    return [*counted(_pairs(changes)), *counted(deletes)]


def flow_from_reply(reply: Sequence[bytes]) -> ScheduledFlow:
    """Rebuild a flow from a script's ``HGETALL`` reply, a flat field/value list."""
    items = iter(reply)
    return flow_from_hash(dict(zip(items, items, strict=True)))


def flow_from_hash(fields: Mapping[bytes, bytes]) -> ScheduledFlow:
    """Rebuild a flow from its hash."""
    values: dict[str, Any] = {}
    for raw_name, raw in fields.items():
        name = raw_name.decode()
        if name in _TEXT_FIELDS:
            values[name] = raw.decode()
        elif name in _FLOAT_FIELDS:
            values[name] = float(raw)
        else:
            values[name] = raw
    type_name, message, traceback, payload = (values.pop(name, None) for name in _ERROR_FIELDS)
    if type_name is not None:
        values["error"] = StoredError(
            type_name.decode(), message.decode(), traceback.decode(), payload
        )
    values["status"] = TaskStatus(values["status"].decode())
    values["attempt"] = int(values["attempt"])
    values["cancel_requested"] = values.get("cancel_requested") == b"1"
    return ScheduledFlow(**values)


_HEADER_JSON = json.JSONEncoder(separators=(",", ":"))
"""Made once: ``json.dumps`` with other than default options makes an encoder per call.
``ensure_ascii`` (the default) keeps the header one line; the scripts split it off at ``\n``."""


def encode_invocation(invocation: Invocation) -> bytes:
    """One line of JSON header, then the result bytes and the error payload bytes."""
    error = invocation.error
    payload = None if error is None else error.payload
    header = {
        "kind": invocation.kind.value,
        "name": invocation.name,
        "status": invocation.status.value,
        "args_hash": invocation.args_hash,
        "attempts": invocation.attempts,
        "started_at": invocation.started_at,
        "completed_at": invocation.completed_at,
        "fire_at": invocation.fire_at,
        "child_flow_id": invocation.child_flow_id,
        "result": None if invocation.result is None else len(invocation.result),
        "error": None if error is None else [error.type_name, error.message, error.traceback],
        "error_payload": None if payload is None else len(payload),
    }
    encoded = _HEADER_JSON.encode(header).encode()
    return b"\n".join((encoded, (invocation.result or b"") + (payload or b"")))


def log_from_hash(flow_id: str, fields: Iterable[tuple[bytes, bytes]]) -> list[Invocation]:
    """A flow's log from its records' hash fields and values, ordered by position."""
    records = [decode_invocation(flow_id, field, value) for field, value in fields]
    return sorted(records, key=lambda record: (record.sequence, record.sub_sequence))


def decode_invocation(flow_id: str, position: bytes, value: bytes) -> Invocation:
    """Rebuild the record of ``flow_id`` stored at ``position`` (``b"<seq>:<sub>"``)."""
    sequence, _, sub_sequence = position.partition(b":")
    raw_header, _, data = value.partition(b"\n")
    header = json.loads(raw_header)
    result_length, payload_length = header.pop("result"), header.pop("error_payload")
    error = header.pop("error")
    if error is not None:
        payload = None if payload_length is None else data[len(data) - payload_length :]
        error = StoredError(error[0], error[1], error[2], payload)
    return Invocation(
        flow_id=flow_id,
        sequence=int(sequence),
        sub_sequence=int(sub_sequence),
        kind=OperationKind(header.pop("kind")),
        status=InvocationStatus(header.pop("status")),
        result=None if result_length is None else data[:result_length],
        error=error,
        **header,
    )


def encode_signal(sent_at: float, payload: bytes) -> bytes:
    """A signal's stored value: its time, a newline, its payload."""
    return number(sent_at).encode() + b"\n" + payload


def decode_signal(value: bytes) -> tuple[float, bytes]:
    """The time and payload of a stored signal value."""
    sent_at, _, payload = value.partition(b"\n")
    return float(sent_at), payload
