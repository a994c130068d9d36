# The bus's processes (worker, topic initialisation, CLI) in one image.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY bus ./bus
COPY connectors ./connectors
RUN pip install --no-cache-dir '.[all]' && useradd --create-home bus
USER bus
ENV BUS_DATA_DIR=/home/bus/var BUS_WEB_HOST=0.0.0.0
ENTRYPOINT ["bus"]
CMD ["--help"]
