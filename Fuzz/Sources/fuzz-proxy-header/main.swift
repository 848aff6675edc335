import FuzzTargets

runFuzzer(fuzzProxyHeader)
