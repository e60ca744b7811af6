"""The differential transparency fuzzer (SPEC.md §11, issue 18): one generated scenario
runs on a direct connection and through `fastproxy serve`; what each end observed must
match but for the differences listed in compare.ALLOWED."""
