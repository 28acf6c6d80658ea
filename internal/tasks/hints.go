package tasks

import (
	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
)

// DeadLetterHint says what an operator does about dead letters with this
// reason: the console shows it beside each reason (README "Dead letters"
// has the same table).
func DeadLetterHint(reason string) string {
	switch reason {
	case string(ghl.ReasonUnauthorized):
		return "The token is invalid, expired or not for this location: fix the location's token (enqueue tokens set --replace, or GHL_TOKENS_FILE), then requeue. Or the message belongs to another location than its location_id: send it again with the right one (a requeue keeps the wrong one)."
	case string(ghl.ReasonForbidden):
		return "The token lacks the conversations/message.write scope: grant it, then requeue."
	case string(ghl.ReasonBadRequest), string(ghl.ReasonUnprocessable), string(ghl.ReasonClientError), string(ghl.ReasonInvalidID):
		return "HighLevel refused the request: read its message; usually the message id is wrong. Requeueing the same id fails again."
	case ReasonTokenKey:
		return "The location's stored OAuth tokens (or the agency's) do not decrypt with this worker's GHL_TOKEN_KEY, 5 tries running: give every worker the key `enqueue tokens set` used (or load the pair again with the workers' key: tokens set --replace, or tokens agency set --replace for the agency's), then requeue."
	case string(ghl.ReasonInvalidToken):
		return "The location's token has a space, control or non-ASCII character (a line break pasted inside it?), so no request could carry it: fix the token (GHL_TOKENS_FILE is reloaded without restart; tokens are trimmed), then requeue."
	case string(ghl.ReasonNoToken):
		return "No token is configured for the location: check its id first (a mistyped location id has none, and a requeue fails again: purge those and send the right id); else add it to GHL_TOKENS_FILE (reloaded without restart) or load an OAuth pair, then requeue. The WORKER column names the worker, if only some lack it."
	case ReasonInvalidPayload, ReasonUnknownType, "corrupt_record":
		return "A task ghlcancel did not write: inspect its payload. It cannot be requeued."
	case string(ghl.ReasonServerError), string(ghl.ReasonTimeout), string(ghl.ReasonNetwork), string(ghl.ReasonBadResponse), ReasonOutcomeWrite:
		return "Retries ran out (about a day with the default 150) while HighLevel failed: check HighLevel's status, then requeue."
	case string(ghl.ReasonMisrouted):
		return "Every answer came from something other than HighLevel's API (route-level 404, HTML page, redirect): fix GHL_BASE_URL or the proxy, restart the workers, then requeue."
	case ReasonWrongKind:
		return "The id is the other kind's (an email's emailMessageId sent as a message, or the reverse); the api_message says which, and the message's status. Requeue: it goes as the other kind. Sending it again with the right kind does the same; either way this dead letter leaves its campaign."
	case ReasonOtherKindUnread:
		return "Not found as its kind, and reading the id as the other kind failed (HighLevel 5xx or timeout) after the task's retries: it may be the other kind's and still scheduled. Requeue to try again; purge it if the kind is right."
	case ReasonEmailConversationID:
		return "The id is a scheduled email's conversation message id; HighLevel cancels an email by its emailMessageId, which the api_message names. Send that id with kind email (a requeue sends the same id again)."
	case ReasonStillScheduled:
		return "The cancel said \"not found\" 5 times, yet the message reads back as scheduled: look at it in HighLevel, then requeue to try again."
	case string(ghl.ReasonTokenSource), ReasonLimiter, ReasonInterrupted, ReasonCircuitOpen, string(ghl.ReasonRateLimited), ReasonPaced:
		return "The last attempt failed before a call (token source or Redis unreachable, out of time, calls paused, location busy): fix the cause, then requeue."
	case string(ghl.ReasonInvalidGrant):
		return "The OAuth refresh was refused for good: reinstall the app for the location, load the new pair (enqueue tokens set --replace), then requeue."
	case tokens.ReasonNotInstalled, tokens.ReasonLocationInactive, tokens.ReasonAgencyRevoked, tokens.ReasonMintRefused, tokens.ReasonMintFailed:
		return tokens.MintHint(reason)
	case ReasonPanic:
		return "A bug in the handler (the stack is in the worker log): report it, requeue once fixed."
	}
	return "Read the API message and the worker log, fix the cause, then requeue."
}
