-- wrk script: POST a non-streaming chat with the bench key.
wrk.method = "POST"
wrk.body = '{"message":"What does the runtime do under load?","mode":"chat"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
