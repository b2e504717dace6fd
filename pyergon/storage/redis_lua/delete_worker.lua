-- delete_worker: a worker id. Reply: 1 if it had a record (or a key of another type).
local id = arg()
local removed = redis.call('ZREM', p .. ':workers', id) + redis.call('DEL', worker_key(id))
return removed > 0 and 1 or 0
