-- Token bucket (GCRA) for one key, mirroring `wasmgate_counters::decide` and `absorb` for
-- `Algorithm::TokenBucket`. Time is counted in slots of window/limit ms since the epoch:
-- slot(t) = floor(t * limit / window), and slot j starts at start(j) = ceil(j * window / limit) ms.
-- KEYS[1] holds the theoretical arrival time in slots (tat_slot, an integer), kept until start(tat).
-- ARGV: now (ms), window (ms), limit, used, cost. Replies {tat_slot before the decision}, from which
-- the gateway decides (as `decide` does, storing what this script stores).
-- Products are split so that no term leaves the doubles' exact range (2^53, given
-- limit * window <= 2^53 and limit <= 1000 * window): slot(t) = a * limit + floor(r * limit / window)
-- with t = a * window + r, and start(j) = b * window + ceil(q * window / limit) with j = b * limit + q.
local now, w, L, used, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local function slot(t)
  local a = math.floor(t / w)
  return a * L + math.floor((t - a * w) * L / w)
end
local function start(j)
  if j <= 0 then return 0 end
  local b = math.floor(j / L)
  local q = j - b * L
  return b * w + math.ceil(q * w / L)
end
local tat = tonumber(redis.call('GET', KEYS[1])) or 0
local now_slot = slot(now)
if used > 0 then
  tat = math.max(tat, now_slot) + used
end
local before = tat
if cost > 0 then
  local level = math.max(tat - now_slot, 0)
  if level + cost <= L then
    tat = now_slot + level + cost
  end
end
local until_ms = start(tat)
if until_ms > now then
  redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', string.format('%d', until_ms - now))
else
  redis.call('DEL', KEYS[1])
end
return {before}
