-- Argo CD health check for kubetune.io/FineTuneJob (resource_customizations layout).
-- Healthy: the run Succeeded (Ready=True). Degraded: it Failed or is Stalled (it cannot progress without
-- a change: invalid spec, backoff exhausted, deadline exceeded, a missing PVC or Secret).
-- Suspended: spec.suspend. Progressing: anything else, including a status that does not yet reflect
-- the latest spec (observedGeneration < generation) and an object being deleted.
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
  hs.message = "FineTuneJob is being deleted"
  return hs
end

if obj.status == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the kubetune operator to pick up the FineTuneJob"
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
  hs.message = string.format("Running: step %d/%d (%.1f%%)", progress.step or 0, progress.totalSteps,
    progress.percent or 0)
elseif reconciling ~= nil and reconciling.status == "True" then
  hs.message = says(reconciling, phase or "Pending")
else
  hs.message = phase or "Pending"
end
return hs
