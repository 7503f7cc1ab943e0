"""WCH's option names, importable without torch (the package's Config and ``model`` both read them)."""

#: how the softmaxed targets A are divided by their diagonal: "column" = the released code's
#: ``A / diag(A)`` broadcast, W[n, m] = A[n, m] / A[m, m]; "row" = W[n, m] = A[n, m] / A[n, n]
TARGET_NORMALIZATIONS = ("column", "row")
