-- wrk script: GET with the bench key (bench/run.sh's ceiling of one hop).
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
