"""The test-support API: use these, never a copy of them in a test module.

waiting   ``wait_for(fn, timeout, interval, what, fail_if=...)``: the one poll loop (returns what it waited
          for; fails naming WHAT and the last value); ``process_exited(proc)`` for FAIL_IF.
ports     ``free_port()``, ``free_ports(n)``.
crds      ``apply_crds(api)`` (server-side apply + Established), ``wait_served(api, ns)``, ``crd_docs()``.
objects   ``Objects(api, ns, kind)`` (FineTuneJob/ModelServe: create, get, patch, patch_status, delete, status,
          cond, wait_phase, events), ``FTJ(kube, ns)`` (+ jobs, pods), ``condition(obj, type)``,
          ``tiny_job(name, **spec)``, ``example_docs(kind)``.
operator  ``Operator(kubeconfig, log_dir, namespaces)``: `kubetune operator` as a subprocess; ``metric()``,
          and the evidence that it looked: ``reconciles(kind, ns, name)`` / ``wait_reconciled(..., after=n)``.
cluster   the pytest plugin: ``kube`` (session), ``namespace``; ``token_client``; markers ``cluster``, ``kwok``.
controlplane, realnode*, imagetar   the local control plane and the real node (docs/testing.md).
e2e, chart, admission, loopback, mlflow_server, tgi_*, vllm_server   helpers of single suites.
"""
