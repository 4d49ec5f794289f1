-- Healthy: the run Succeeded (Ready=True). Degraded: it Failed or is Stalled (it cannot progress without
-- a change: invalid spec, backoff exhausted, deadline exceeded, a missing PVC or Secret).
-- Suspended: spec.suspend. Progressing: anything else, including a status that does not yet reflect
-- the latest spec (observedGeneration < generation) and an object being deleted.
local early = common_verdict("FineTuneJob")
if early ~= nil then
  return early
end

local hs = {}
local conditions = obj.status.conditions
local phase = obj.status.phase
local ready = condition(conditions, "Ready")
local stalled = condition(conditions, "Stalled")
local failed = condition(conditions, "Failed")
local suspended = condition(conditions, "Suspended")
local reconciling = condition(conditions, "Reconciling")

if phase == "Succeeded" or (ready ~= nil and ready.status == "True") then
  hs.status = "Healthy"
  local result = obj.status.result
  if result ~= nil and result.uri ~= nil then
    hs.message = "Succeeded: result at " .. result.uri
  else
    hs.message = says(ready, "Succeeded")
  end
  return hs
end

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = says(stalled, "Stalled")
  return hs
end

if phase == "Failed" or (failed ~= nil and failed.status == "True") then
  hs.status = "Degraded"
  hs.message = says(failed, "Failed")
  return hs
end

if phase == "Suspended" or (suspended ~= nil and suspended.status == "True")
    or (obj.spec ~= nil and obj.spec.suspend == true) then
  hs.status = "Suspended"
  hs.message = says(suspended, "Suspended")
  return hs
end

hs.status = "Progressing"
local progress = obj.status.progress
if phase == "Running" and progress ~= nil and progress.totalSteps ~= nil and progress.totalSteps > 0 then
  hs.message = "Running: step " .. whole(progress.step) .. "/" .. whole(progress.totalSteps)
    .. " (" .. one_decimal(progress.percent) .. "%)"
elseif reconciling ~= nil and reconciling.status == "True" then
  hs.message = says(reconciling, phase or "Pending")
else
  hs.message = phase or "Pending"
end
return hs
