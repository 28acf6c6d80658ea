package client_test

import (
	"context"
	"fmt"
	"log"
	"net/http/httptest"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/ghlcancel/ghlcancel/client"
	"github.com/ghlcancel/ghlcancel/internal/intake"
)

// Example runs against a real intake API on an in-process Redis; in
// production baseURL is your intake service and the key comes from a secret.
func Example() {
	mr, err := miniredis.Run()
	if err != nil {
		log.Fatal(err)
	}
	defer mr.Close()
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	defer rdb.Close()
	var srv *intake.Server
	srv, err = intake.New(intake.Config{Redis: rdb, Keys: []string{"example-key-0123456789"}})
	if err != nil {
		log.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	defer hs.Close()

	c, err := client.New(hs.URL, "example-key-0123456789")
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()

	// A contact opted out: cancel their next scheduled SMS now.
	r, err := c.Cancel(ctx, client.Cancel{MessageID: "msg123", LocationID: "loc1", Urgent: true})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(r.TaskID, r.Status)

	// A campaign was called off: cancel all of its scheduled messages.
	items := []client.Cancel{
		{MessageID: "m1", LocationID: "loc1", CampaignID: "black-friday"},
		{MessageID: "m2", LocationID: "loc1", CampaignID: "black-friday", SendAt: client.At(time.Now().Add(2 * time.Hour))},
		{MessageID: "e1", LocationID: "loc1", CampaignID: "black-friday", Kind: "email"},
	}
	res, err := c.CancelMany(ctx, items, client.LaneBulk, false)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("enqueued", res.Enqueued)

	st, err := c.Campaign(ctx, "black-friday")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s: %d of %d done\n", st.Campaign, st.Done, st.Total)
	// Output:
	// msg:msg123 enqueued
	// enqueued 3
	// black-friday: 0 of 3 done
}
