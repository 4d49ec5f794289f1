# kubetune-tgi-test: a stand-in for the TGI image in the end-to-end tests. It serves a real model (the
# FineTuneJob's result, mounted from its claim) with transformers on CPU through tests/support/tgi_server.py,
# which speaks TGI's protocol (/health, /info, /generate, LoRA adapters by adapter_id), and takes TGI's
# configuration (MODEL_ID, PORT, HOSTNAME, LORA_ADAPTERS) as a ModelServe's pod sets it.
#
# Built by hack/images.sh with the tests/ folder as context, on top of the trainer image (torch,
# transformers and PEFT at the tested versions):
#   docker build -f tests/e2e/tgi-test.Dockerfile --build-arg TRAINER_IMAGE=kubetune-trainer:dev -t kubetune-tgi-test:dev tests
ARG TRAINER_IMAGE=kubetune-trainer:dev
FROM ${TRAINER_IMAGE}
WORKDIR /opt/tgi-test
COPY __init__.py tests/__init__.py
COPY support/__init__.py support/loopback.py support/tgi_server.py support/tgi_launcher.py tests/support/
ENV PYTHONPATH=/opt/tgi-test
# The operator runs TGI pods as uid 1000 on port 8080 (PodSecurity `restricted`: non-root, no capabilities,
# so no port below 1024) and sets PORT; the trainer image's user 1000 is the default here too.
USER 1000:1000
EXPOSE 8080
ENTRYPOINT ["/usr/bin/tini", "--", "python", "-m", "tests.support.tgi_launcher"]
CMD []
