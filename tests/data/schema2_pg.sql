--
-- PostgreSQL database dump
--


-- Dumped from database version 15.18 (Debian 15.18-0+deb12u1)
-- Dumped by pg_dump version 15.18 (Debian 15.18-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: trioflow_events; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.trioflow_events (
    seq bigint NOT NULL,
    run_id text NOT NULL,
    name text NOT NULL,
    data bytea NOT NULL,
    created_at double precision NOT NULL
);


--
-- Name: trioflow_events_seq_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.trioflow_events_seq_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: trioflow_events_seq_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.trioflow_events_seq_seq OWNED BY public.trioflow_events.seq;


--
-- Name: trioflow_logs; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.trioflow_logs (
    run_id text NOT NULL,
    seq bigint NOT NULL,
    "time" double precision NOT NULL,
    level text NOT NULL,
    step_id text,
    attempt integer,
    message text NOT NULL
);


--
-- Name: trioflow_meta; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.trioflow_meta (
    key text NOT NULL,
    value text NOT NULL
);


--
-- Name: trioflow_queued; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.trioflow_queued (
    seq bigint NOT NULL,
    run_id text NOT NULL,
    queue text NOT NULL,
    priority integer DEFAULT 0 NOT NULL,
    queue_key text,
    dedup_id text,
    state text NOT NULL,
    enqueued_at double precision NOT NULL,
    started_at double precision
);


--
-- Name: trioflow_queued_seq_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.trioflow_queued_seq_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: trioflow_queued_seq_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.trioflow_queued_seq_seq OWNED BY public.trioflow_queued.seq;


--
-- Name: trioflow_queues; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.trioflow_queues (
    name text NOT NULL,
    concurrency integer,
    per_key_concurrency integer,
    rate_limit integer,
    rate_per double precision,
    updated_at double precision NOT NULL
);


--
-- Name: trioflow_runs; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.trioflow_runs (
    run_id text NOT NULL,
    workflow_id text NOT NULL,
    status text NOT NULL,
    snapshot bytea NOT NULL,
    owner text,
    lease_until double precision,
    cancel_requested boolean DEFAULT false NOT NULL,
    cancel_reason text,
    queued boolean DEFAULT false NOT NULL,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    workflow_version text,
    forked_from text
);


--
-- Name: trioflow_schedules; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.trioflow_schedules (
    schedule_id text NOT NULL,
    workflow_id text NOT NULL,
    cron text NOT NULL,
    timezone text NOT NULL,
    catch_up text NOT NULL,
    paused integer DEFAULT 0 NOT NULL,
    handled_until double precision NOT NULL,
    updated_at double precision NOT NULL
);


--
-- Name: trioflow_traces; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.trioflow_traces (
    run_id text NOT NULL,
    traceparent text NOT NULL,
    tracestate text
);


--
-- Name: trioflow_events seq; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.trioflow_events ALTER COLUMN seq SET DEFAULT nextval('public.trioflow_events_seq_seq'::regclass);


--
-- Name: trioflow_queued seq; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.trioflow_queued ALTER COLUMN seq SET DEFAULT nextval('public.trioflow_queued_seq_seq'::regclass);


--
-- Data for Name: trioflow_events; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: trioflow_logs; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.trioflow_logs VALUES ('mig-success', 0, 1796536305.8085706, 'INFO', 'first', 1, 'first step of mig-success');
INSERT INTO public.trioflow_logs VALUES ('mig-failed', 0, 1796536305.8159988, 'INFO', 'first', 1, 'first step of mig-failed');
INSERT INTO public.trioflow_logs VALUES ('mig-canceled', 0, 1796536305.8223934, 'INFO', 'first', 1, 'first step of mig-canceled');
INSERT INTO public.trioflow_logs VALUES ('mig-suspended', 0, 1796536305.8287158, 'INFO', 'first', 1, 'first step of mig-suspended');
INSERT INTO public.trioflow_logs VALUES ('mig-waiting', 0, 1796536305.8553338, 'INFO', 'first', 1, 'first step of mig-waiting');


--
-- Data for Name: trioflow_meta; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.trioflow_meta VALUES ('schema_version', '2');


--
-- Data for Name: trioflow_queued; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: trioflow_queues; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: trioflow_runs; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.trioflow_runs VALUES ('mig-suspended', 'pair', 'suspended', '\x7b2272756e5f6964223a226d69672d73757370656e646564222c22776f726b666c6f775f6964223a2270616972222c22737461747573223a2273757370656e646564222c22696e707574223a2d352c227374657073223a7b226669727374223a7b22737461747573223a2273756363657373222c226f7574707574223a7b226e223a2d352c22646f75626c6564223a2d31307d2c227061796c6f6164223a2d352c22737461727465645f6174223a313739363533363330352e383238363839382c22656e6465645f6174223a313739363533363330352e383238373331337d2c227365636f6e64223a7b22737461747573223a2273757370656e646564222c227061796c6f6164223a7b226e223a2d352c22646f75626c6564223a2d31307d2c2273757370656e645f7061796c6f6164223a7b227175657374696f6e223a22617070726f76653f222c226e223a2d357d2c22737461727465645f6174223a313739363533363330352e383239383936372c22656e6465645f6174223a313739363533363330352e383239393138347d7d2c2273757370656e646564223a5b227365636f6e64225d7d', NULL, NULL, false, NULL, false, 1796536305.8268106, 1796536305.829983, 'm1', NULL);
INSERT INTO public.trioflow_runs VALUES ('mig-success', 'pair', 'success', '\x7b2272756e5f6964223a226d69672d73756363657373222c22776f726b666c6f775f6964223a2270616972222c22737461747573223a2273756363657373222c22696e707574223a332c22726573756c74223a7b22746f74616c223a372c22617070726f7665645f6279223a226e6f626f6479227d2c227374657073223a7b226669727374223a7b22737461747573223a2273756363657373222c226f7574707574223a7b226e223a332c22646f75626c6564223a367d2c227061796c6f6164223a332c22737461727465645f6174223a313739363533363330352e383038353230382c22656e6465645f6174223a313739363533363330352e383038363038387d2c227365636f6e64223a7b22737461747573223a2273756363657373222c226f7574707574223a7b22746f74616c223a372c22617070726f7665645f6279223a226e6f626f6479227d2c227061796c6f6164223a7b226e223a332c22646f75626c6564223a367d2c22737461727465645f6174223a313739363533363330352e383130373936332c22656e6465645f6174223a313739363533363330352e383130383138327d7d7d', NULL, NULL, false, NULL, false, 1796536305.8039699, 1796536305.8118045, 'm1', NULL);
INSERT INTO public.trioflow_runs VALUES ('mig-failed', 'fails', 'failed', '\x7b2272756e5f6964223a226d69672d6661696c6564222c22776f726b666c6f775f6964223a226661696c73222c22737461747573223a226661696c6564222c22696e707574223a342c226572726f72223a7b2274797065223a2256616c75654572726f72222c226d657373616765223a2263616e6e6f742068616e646c65207b276e273a20342c2027646f75626c6564273a20387d222c22737465705f6964223a6e756c6c2c2274726163656261636b223a2254726163656261636b20286d6f737420726563656e742063616c6c206c617374293a5c6e202046696c65205c222f776f726b2f77742d6d6967726174652f7472696f666c6f772f5f6578656375746f722e70795c222c206c696e65203239362c20696e2066696e6973685f737465705c6e202020206f7574707574203d20617761697420737465702e6578656375746528637478295c6e202020202020202020202020205e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5c6e202046696c65205c222f776f726b2f77742d6d6967726174652f74657374732f6d6967726174696f6e5f6170702e70795c222c206c696e652036392c20696e205f6578706c6f64655c6e2020202072616973652056616c75654572726f7228665c2263616e6e6f742068616e646c65207b6374782e696e7075745f6461746121727d5c22295c6e56616c75654572726f723a2063616e6e6f742068616e646c65207b276e273a20342c2027646f75626c6564273a20387d5c6e227d2c227374657073223a7b226669727374223a7b22737461747573223a2273756363657373222c226f7574707574223a7b226e223a342c22646f75626c6564223a387d2c227061796c6f6164223a342c22737461727465645f6174223a313739363533363330352e3831353936312c22656e6465645f6174223a313739363533363330352e383136303138367d2c226578706c6f6465223a7b22737461747573223a226661696c6564222c227061796c6f6164223a7b226e223a342c22646f75626c6564223a387d2c226572726f72223a7b2274797065223a2256616c75654572726f72222c226d657373616765223a2263616e6e6f742068616e646c65207b276e273a20342c2027646f75626c6564273a20387d222c22737465705f6964223a226578706c6f6465222c2274726163656261636b223a2254726163656261636b20286d6f737420726563656e742063616c6c206c617374293a5c6e202046696c65205c222f776f726b2f77742d6d6967726174652f7472696f666c6f772f5f6578656375746f722e70795c222c206c696e65203239362c20696e2066696e6973685f737465705c6e202020206f7574707574203d20617761697420737465702e6578656375746528637478295c6e202020202020202020202020205e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5c6e202046696c65205c222f776f726b2f77742d6d6967726174652f74657374732f6d6967726174696f6e5f6170702e70795c222c206c696e652036392c20696e205f6578706c6f64655c6e2020202072616973652056616c75654572726f7228665c2263616e6e6f742068616e646c65207b6374782e696e7075745f6461746121727d5c22295c6e56616c75654572726f723a2063616e6e6f742068616e646c65207b276e273a20342c2027646f75626c6564273a20387d5c6e227d2c22737461727465645f6174223a313739363533363330352e383137353437382c22656e6465645f6174223a313739363533363330352e383137353832367d7d7d', NULL, NULL, false, NULL, false, 1796536305.8126736, 1796536305.8185966, 'm1', NULL);
INSERT INTO public.trioflow_runs VALUES ('mig-canceled', 'pair', 'canceled', '\x7b2272756e5f6964223a226d69672d63616e63656c6564222c22776f726b666c6f775f6964223a2270616972222c22737461747573223a2263616e63656c6564222c22696e707574223a2d312c227374657073223a7b226669727374223a7b22737461747573223a2273756363657373222c226f7574707574223a7b226e223a2d312c22646f75626c6564223a2d327d2c227061796c6f6164223a2d312c22737461727465645f6174223a313739363533363330352e3832323335392c22656e6465645f6174223a313739363533363330352e383232343131357d2c227365636f6e64223a7b22737461747573223a2263616e63656c6564222c227061796c6f6164223a7b226e223a2d312c22646f75626c6564223a2d327d2c2273757370656e645f7061796c6f6164223a7b227175657374696f6e223a22617070726f76653f222c226e223a2d317d2c22737461727465645f6174223a313739363533363330352e3832333830352c22656e6465645f6174223a313739363533363330352e3832343637327d7d2c2263616e63656c5f726571756573746564223a747275652c2263616e63656c5f726561736f6e223a226e6f206c6f6e676572206e6565646564227d', NULL, NULL, true, 'no longer needed', false, 1796536305.81937, 1796536305.824672, 'm1', NULL);
INSERT INTO public.trioflow_runs VALUES ('mig-pending', 'pair', 'pending', '\x7b2272756e5f6964223a226d69672d70656e64696e67222c22776f726b666c6f775f6964223a2270616972222c22737461747573223a2270656e64696e67227d', NULL, NULL, false, NULL, false, 1796536305.8264897, 1796536305.8264897, 'm1', NULL);
INSERT INTO public.trioflow_runs VALUES ('mig-waiting', 'event', 'waiting', '\x7b2272756e5f6964223a226d69672d77616974696e67222c22776f726b666c6f775f6964223a226576656e74222c22737461747573223a2277616974696e67222c22696e707574223a372c227374657073223a7b226669727374223a7b22737461747573223a2273756363657373222c226f7574707574223a7b226e223a372c22646f75626c6564223a31347d2c227061796c6f6164223a372c22737461727465645f6174223a313739363533363330352e383535333031392c22656e6465645f6174223a313739363533363330352e3835353335337d2c2272656365697074223a7b22737461747573223a2277616974696e67222c227061796c6f6164223a7b226e223a372c22646f75626c6564223a31347d2c22737461727465645f6174223a313739363533363330352e383537353031357d7d7d', NULL, NULL, false, NULL, false, 1796536305.8484266, 1796536305.8575451, 'm1', NULL);
INSERT INTO public.trioflow_runs VALUES ('mig-foreach', 'items', 'running', '\x7b2272756e5f6964223a226d69672d666f7265616368222c22776f726b666c6f775f6964223a226974656d73222c22737461747573223a2272756e6e696e67222c22696e707574223a5b302c312c322c335d2c227374657073223a7b22737175617265223a7b22737461747573223a2272756e6e696e67222c227061796c6f6164223a5b302c312c322c335d2c22737461727465645f6174223a313739363533363330352e383637313231357d7d2c2270726f6772657373223a7b22737175617265223a7b2230223a302c2231223a317d7d7d', NULL, NULL, false, NULL, false, 1796536305.863941, 1796536305.8678694, 'm1', NULL);
INSERT INTO public.trioflow_runs VALUES ('mig-loop', 'loop', 'suspended', '\x7b2272756e5f6964223a226d69672d6c6f6f70222c22776f726b666c6f775f6964223a226c6f6f70222c22737461747573223a2273757370656e646564222c22696e707574223a302c227374657073223a7b227469636b223a7b22737461747573223a2273757370656e646564222c227061796c6f6164223a322c2273757370656e645f7061796c6f6164223a7b226174223a327d2c22737461727465645f6174223a313739363533363330352e383333323833342c22656e6465645f6174223a313739363533363330352e383333323939367d7d2c2270726f6772657373223a7b227469636b223a5b322c322c66616c73655d7d2c2273757370656e646564223a5b227469636b225d7d', NULL, NULL, false, NULL, false, 1796536305.8305695, 1796536305.8333585, 'm1', NULL);


--
-- Data for Name: trioflow_schedules; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: trioflow_traces; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Name: trioflow_events_seq_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.trioflow_events_seq_seq', 1, false);


--
-- Name: trioflow_queued_seq_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.trioflow_queued_seq_seq', 1, false);


--
-- Name: trioflow_events trioflow_events_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.trioflow_events
    ADD CONSTRAINT trioflow_events_pkey PRIMARY KEY (seq);


--
-- Name: trioflow_logs trioflow_logs_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.trioflow_logs
    ADD CONSTRAINT trioflow_logs_pkey PRIMARY KEY (run_id, seq);


--
-- Name: trioflow_meta trioflow_meta_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.trioflow_meta
    ADD CONSTRAINT trioflow_meta_pkey PRIMARY KEY (key);


--
-- Name: trioflow_queued trioflow_queued_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.trioflow_queued
    ADD CONSTRAINT trioflow_queued_pkey PRIMARY KEY (seq);


--
-- Name: trioflow_queued trioflow_queued_run_id_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.trioflow_queued
    ADD CONSTRAINT trioflow_queued_run_id_key UNIQUE (run_id);


--
-- Name: trioflow_queues trioflow_queues_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.trioflow_queues
    ADD CONSTRAINT trioflow_queues_pkey PRIMARY KEY (name);


--
-- Name: trioflow_runs trioflow_runs_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.trioflow_runs
    ADD CONSTRAINT trioflow_runs_pkey PRIMARY KEY (run_id);


--
-- Name: trioflow_schedules trioflow_schedules_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.trioflow_schedules
    ADD CONSTRAINT trioflow_schedules_pkey PRIMARY KEY (schedule_id);


--
-- Name: trioflow_traces trioflow_traces_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.trioflow_traces
    ADD CONSTRAINT trioflow_traces_pkey PRIMARY KEY (run_id);


--
-- Name: trioflow_events_run; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX trioflow_events_run ON public.trioflow_events USING btree (run_id, seq);


--
-- Name: trioflow_queued_dedup; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX trioflow_queued_dedup ON public.trioflow_queued USING btree (queue, dedup_id) WHERE (dedup_id IS NOT NULL);


--
-- Name: trioflow_queued_order; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX trioflow_queued_order ON public.trioflow_queued USING btree (queue, state, priority DESC, seq);


--
-- Name: trioflow_queued_started; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX trioflow_queued_started ON public.trioflow_queued USING btree (queue, started_at) WHERE (started_at IS NOT NULL);


--
-- Name: trioflow_runs_created; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX trioflow_runs_created ON public.trioflow_runs USING btree (created_at);


--
-- Name: trioflow_runs_owner; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX trioflow_runs_owner ON public.trioflow_runs USING btree (owner);


--
-- Name: trioflow_runs_queue; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX trioflow_runs_queue ON public.trioflow_runs USING btree (created_at) WHERE ((status = 'pending'::text) AND queued);


--
-- Name: trioflow_runs_status; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX trioflow_runs_status ON public.trioflow_runs USING btree (status, workflow_id);


--
-- PostgreSQL database dump complete
--


