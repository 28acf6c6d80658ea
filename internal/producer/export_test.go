package producer

// The enqueue script's budget and reach for moving pending tasks, for the
// tests of a long backlog.
const (
	PromoteScanMax = promoteScanMax
	PromoteReach   = promoteReach
)
