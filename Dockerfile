# One image for the API and the workers (docker-compose.yml picks the command).
FROM python:3.11-slim
WORKDIR /srv
COPY pyproject.toml README.md ./
COPY pgqueue ./pgqueue
COPY app ./app
COPY schema ./schema
RUN pip install --no-cache-dir ".[web,s3,graphql]"
ENV PYTHONUNBUFFERED=1
EXPOSE 8000
CMD ["python", "-m", "app", "serve", "--host", "0.0.0.0", "--port", "8000"]
