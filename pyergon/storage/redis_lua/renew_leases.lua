-- renew_leases: the new expiry, then flow id, lease token, ... Reply: the ids renewed.
return renew_held_leases(arg())
