wrk.method = "POST"
wrk.body = "{\"account\": \"acc-1042\", \"amount\": 1250, \"currency\": \"EUR\", \"memo\": \"invoice 77\"}"
wrk.headers["Content-Type"] = "application/json"
