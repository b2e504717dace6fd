-- reset: every flow, record and signal under the prefix goes; the schema version stays.
for _, id in ipairs(redis.call('SMEMBERS', p .. ':ids')) do delete_everything_of(id) end
redis.call('DEL', p .. ':ids')
return 0
