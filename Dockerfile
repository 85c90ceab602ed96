# The image of the web app, the migrations and the workers, in two builds:
#   TORCH_VARIANT=cuda  PyPI's torch==2.13.0 (the CUDA build on Linux x86_64): GPU workers
#   TORCH_VARIANT=cpu   PyTorch's CPU wheel of the same version, a few GB smaller: the web
#                       app, the migrations and the CPU (pack) worker
FROM python:3.11-slim
ARG TORCH_VARIANT=cuda

ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DOMAINSTUDIO_DATA_DIR=/data HF_HUB_OFFLINE=1

WORKDIR /srv/domainstudio
RUN useradd --create-home --uid 10001 domainstudio && mkdir -p /data /models && chown domainstudio /data /models

# dependencies first, so a code change does not reinstall torch
COPY pyproject.toml ./
RUN if [ "$TORCH_VARIANT" = "cpu" ]; then \
      pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu; fi
RUN mkdir -p app worker && touch app/__init__.py worker/__init__.py README.md \
 && pip install . && pip uninstall -y domainstudio

COPY alembic.ini README.md ./
COPY app app
COPY worker worker
COPY migrations migrations
COPY templates templates
COPY static static
COPY locales locales
COPY scripts scripts
RUN pip install --no-deps -e . && python scripts/translations.py compile

USER domainstudio
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=10s --start-period=20s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=8).status == 200 else 1)" || exit 1
# a stop waits at most 5 s for open responses (the run pages' live event streams reconnect)
CMD ["uvicorn", "--factory", "app.main:create_app", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers", \
     "--timeout-graceful-shutdown", "5"]
