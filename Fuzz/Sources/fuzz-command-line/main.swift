import FuzzTargets

runFuzzer(fuzzCommandLine)
