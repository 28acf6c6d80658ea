package deadletter

// DropCampaignsOlder is the prune's conditional delete of campaigns' notes,
// for the race test.
var DropCampaignsOlder = dropCampaignsOlder
