package app_test

import "github.com/wspush/wspush/middle"

func middleHistory(n int) middle.Config { return middle.Config{HistorySize: n} }
