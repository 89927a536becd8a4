//! A key one process holds at a time, with an expiry it renews: the `--node-id` claim
//! (`publisher/claim.rs`) and the webhooks' deliverer (`webhooks.rs`).

/// KEYS: the key. ARGV: this process, ms. Takes or renews it if it is free or ours; 1 if we
/// hold it now, 0 if another does.
pub const TAKE: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0";

/// KEYS: the key. ARGV: this process. Gives it back, if it is still ours.
pub const GIVE_BACK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";
