-- Argo CD health check for kubetune.io/ModelServe (resource_customizations layout).
-- Healthy: serving the desired revision (phase Ready, Ready=True, not Degraded). Degraded: a rollout
-- failed or was rolled back (the previous revision may still serve), or it is Stalled (failed with no
-- previous revision, a model the engine cannot serve, an invalid spec). Progressing: rolling out,
-- waiting for a FineTuneJob's result, a status that does not yet reflect the latest spec
-- (observedGeneration < generation), or an object being deleted.
local hs = {}

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

local function says(c, fallback)
  if c ~= nil and c.message ~= nil and c.message ~= "" then
    return c.message
  end
  if c ~= nil and c.reason ~= nil and c.reason ~= "" then
    return c.reason
  end
  return fallback
end

if obj.metadata ~= nil and obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "ModelServe is being deleted"
  return hs
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubetune operator to pick up the ModelServe"
  return hs
end

local generation = obj.metadata and obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubetune operator to observe generation " .. tostring(generation)
  return hs
end

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
  local replicas = string.format("%d/%d replicas ready", obj.status.readyReplicas or 0, obj.status.replicas or 0)
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
