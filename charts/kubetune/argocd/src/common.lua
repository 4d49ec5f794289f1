-- Shared by both kinds' health checks. Argo CD runs a check alone, with no `require` of our files and, for a
-- check configured in argocd-cm, without the string and math libraries: only base Lua and table.
-- So this file is pasted at the top of each kind's check by hack/argocd_health.py.

-- The condition TYPE of a status's conditions, or nil.
local function condition(conditions, type)
  if conditions == nil then
    return nil
  end
  for _, c in ipairs(conditions) do
    if c.type == type then
      return c
    end
  end
  return nil
end

-- What a condition says: its message, else its reason, else FALLBACK.
local function says(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

-- N rounded down to a whole number, as text ("40", not "40.0"): % is base Lua, math.floor is not.
local function whole(n)
  n = n or 0
  return tostring(n - n % 1)
end

-- P with one decimal ("40.0"), rounded.
local function one_decimal(p)
  local tenths = (p or 0) * 10 + 0.5
  tenths = tenths - tenths % 1
  local frac = tenths % 10
  return whole((tenths - frac) / 10) .. "." .. whole(frac)
end

-- The verdict every kind shares, or nil: being deleted, not yet picked up by the operator, or a status
-- that does not reflect the latest spec (observedGeneration < generation) are all Progressing.
local function common_verdict(kind)
  if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
    return {status = "Progressing", message = kind .. " is being deleted"}
  end
  if obj.status == nil then
    return {status = "Progressing", message = "Waiting for the kubetune operator to pick up the " .. kind}
  end
  local generation = obj.metadata and obj.metadata.generation
  local observed = obj.status.observedGeneration
  if generation ~= nil and (observed == nil or observed < generation) then
    return {
      status = "Progressing",
      message = "Waiting for the kubetune operator to observe generation " .. whole(generation),
    }
  end
  return nil
end
