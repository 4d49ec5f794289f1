-- Healthy: serving the desired revision (phase Ready, Ready=True, not Degraded). Degraded: a rollout
-- failed or was rolled back (the previous revision may still serve), or it is Stalled (failed with no
-- previous revision, a model the engine cannot serve, an invalid spec). Progressing: rolling out,
-- waiting for a FineTuneJob's result, a status that does not yet reflect the latest spec
-- (observedGeneration < generation), or an object being deleted.
local early = common_verdict("ModelServe")
if early ~= nil then
  return early
end

local hs = {}
local conditions = obj.status.conditions
local phase = obj.status.phase
local ready = condition(conditions, "Ready")
local stalled = condition(conditions, "Stalled")
local degraded = condition(conditions, "Degraded")
local progressing = condition(conditions, "Progressing")
local reconciling = condition(conditions, "Reconciling")

if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = says(stalled, "Stalled")
  return hs
end

if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = says(ready, "Failed")
  return hs
end

if phase == "Degraded" or (degraded ~= nil and degraded.status == "True") then
  hs.status = "Degraded"
  hs.message = says(degraded, "Degraded")
  return hs
end

if phase == "Ready" and ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  local endpoint = obj.status.endpoint
  local replicas = whole(obj.status.readyReplicas) .. "/" .. whole(obj.status.replicas) .. " replicas ready"
  if endpoint ~= nil then
    hs.message = "Serving at " .. endpoint .. " (" .. replicas .. ")"
  else
    hs.message = says(ready, "Ready") .. " (" .. replicas .. ")"
  end
  return hs
end

hs.status = "Progressing"
if reconciling ~= nil and reconciling.status == "True" then
  hs.message = says(reconciling, phase or "Pending")
elseif progressing ~= nil and progressing.status == "True" then
  hs.message = says(progressing, phase or "Pending")
else
  hs.message = says(ready, phase or "Pending")
end
return hs
