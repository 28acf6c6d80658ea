package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/internal/ghl"
	"github.com/ghlcancel/ghlcancel/internal/tokens"
)

// TypeInstall mints the token of a location the agency's app was just
// installed at (an INSTALL webhook), so that its first cancels need no mint
// and a refusal shows at once.
const TypeInstall = "ghl:location:install"

// InstallMaxRetry: an install that arrives before the agency pair is
// stored is retried with the usual backoff (2 s doubling to 20 min) for
// about 7 hours. The install itself is recorded when the webhook arrives:
// once the pair is stored, the location's token is minted on first use
// even if these retries ran out.
const InstallMaxRetry = 25

// installNotYet: a not_installed answer right after an INSTALL is asked
// again this many times (2 s, 4 s, 8 s later) before it is believed.
const installNotYet = 3

// InstallPayload is an install task's payload: ids only, no token.
type InstallPayload struct {
	LocationID string `json:"location_id"`
	CompanyID  string `json:"company_id,omitempty"`
	EventID    string `json:"event_id,omitempty"`
	EventAt    int64  `json:"event_at,omitempty"` // unix ms
}

// NewInstallTask builds an install task; its id derives from the event's,
// so a redelivered event queues nothing new.
func NewInstallTask(p InstallPayload, eventKey string) (*asynq.Task, error) {
	if err := ghl.ValidateID(p.LocationID); err != nil {
		return nil, fmt.Errorf("install: location: %w", err)
	}
	b, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	return asynq.NewTask(TypeInstall, b, asynq.Queue(QueueDefault), asynq.MaxRetry(InstallMaxRetry),
		asynq.TaskID("install:"+eventKey), asynq.Retention(time.Hour)), nil
}

// InstallHandler runs install tasks. Its ProcessTask is the one place an
// install task's fate is decided.
type InstallHandler struct {
	Tokens tokens.Source
	Redis  redis.UniversalClient
	Logger *slog.Logger
}

// ProcessTask mints (through Tokens, so a location with a token of its own
// keeps it): done when a token is there or HighLevel refused for good (the
// location's cancels are then dead-lettered with the reason); retried while
// no agency pair is stored or minting fails for now.
func (h *InstallHandler) ProcessTask(ctx context.Context, t *asynq.Task) error {
	log := h.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var p InstallPayload
	if err := json.Unmarshal(t.Payload(), &p); err != nil || ghl.ValidateID(p.LocationID) != nil {
		log.Error("install task: invalid payload; dropped", "task_type", t.Type())
		return fmt.Errorf("invalid install payload: %w", asynq.SkipRetry)
	}
	if ent, ok, err := tokens.RegistryEntryFor(ctx, h.Redis, p.LocationID); err != nil {
		return fmt.Errorf("install: reading the registry: %w", err)
	} else if ok && !ent.Installed {
		log.Info("install task: the location was uninstalled since; nothing to mint", "location_id", p.LocationID)
		return nil
	}
	in, ok := h.Tokens.(tokens.Installer)
	if !ok {
		log.Warn("install: these workers mint no agency tokens (set GHL_CLIENT_ID, GHL_CLIENT_SECRET and GHL_TOKEN_KEY); the install is recorded", "location_id", p.LocationID)
		return nil
	}
	err := in.Install(ctx, p.LocationID)
	v, failed := ClassifyTokenError(err)
	retried, _ := asynq.GetRetryCount(ctx)
	switch {
	case failed && v.Reason == tokens.ReasonNotInstalled && retried < installNotYet:
		// HighLevel may not show the install yet: ask again soon, and do
		// not let the refusal answer the location's cancels meanwhile.
		_ = tokens.ForgetMintFailures(ctx, h.Redis, []string{p.LocationID})
		return fmt.Errorf("install of %s: HighLevel does not show it yet: %w", p.LocationID, err)
	case !failed:
		log.Info("install: location token ready", "location_id", p.LocationID)
		return nil
	case errors.Is(err, tokens.ErrNoToken):
		log.Warn("install: no agency pair is stored yet; retrying (load it with `enqueue tokens agency set`)", "location_id", p.LocationID)
		return fmt.Errorf("install of %s: %w", p.LocationID, err)
	case v.Fate == FateDead:
		log.Warn("install: HighLevel refused a token for the location; its cancels will be dead-lettered", "location_id", p.LocationID, "reason", v.Reason, "hint", v.Message)
		return nil
	}
	return fmt.Errorf("install of %s: %w", p.LocationID, err)
}
