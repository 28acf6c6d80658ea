package producer

// PromoteScanMax is promoteScanMax, for the tests of a long backlog.
const PromoteScanMax = promoteScanMax
