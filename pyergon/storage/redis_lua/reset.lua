-- reset: every flow, record, signal and worker record under the prefix goes; the schema
-- version stays.
for _, id in ipairs(redis.call('SMEMBERS', p .. ':ids')) do delete_everything_of(id) end
redis.call('DEL', p .. ':ids')
for _, id in ipairs(redis.call('ZRANGE', p .. ':workers', 0, -1)) do
  redis.call('UNLINK', worker_key(id))
end
redis.call('DEL', p .. ':workers')
return 0
